//! What `check` says about the drop and state folders.

use std::path::Path;

use crate::config::Config;

/// Remarks for `check` about the folders.
pub fn check_folders(config: &Config) -> Vec<String> {
    let mut remarks = Vec::new();
    let drop = &config.watch.dir;
    if !drop.is_dir() {
        remarks.push(format!(
            "error: the drop folder {} does not exist",
            drop.display()
        ));
    } else if !writable(drop) {
        remarks.push(format!(
            "error: the drop folder {} is not writable by this user (claiming moves files out of it)",
            drop.display()
        ));
    }
    let state = &config.state_dir;
    if state.exists() && !writable(state) {
        remarks.push(format!(
            "error: the state folder {} is not writable by this user",
            state.display()
        ));
    }
    if let (Some(drop_dev), Some(state_dev)) = (device_of(drop), device_of(nearest_existing(state)))
    {
        if drop_dev != state_dev {
            remarks.push(format!(
                "warning: {} and {} are on different file systems: claims will copy, fsync and unlink instead of an atomic rename",
                drop.display(),
                state.display()
            ));
        }
    }
    remarks
}

fn writable(dir: &Path) -> bool {
    let probe = dir.join(format!(".consent-drop-check-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

fn nearest_existing(path: &Path) -> &Path {
    let mut current = path;
    while !current.exists() {
        match current.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => current = parent,
            _ => return Path::new("."),
        }
    }
    current
}

fn device_of(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|meta| meta.dev())
}
