//! `retry`: quarantined files go back into the drop folder once the config
//! reads them well; the others stay with their reason.

#[path = "support/harness.rs"]
mod harness;

use harness::{wait_until, ConfigDoc, Site, IMPORT, LONG};

fn comma_rows(prefix: &str, rows: usize) -> String {
    let mut text = String::new();
    for i in 0..rows {
        text.push_str(&format!(
            "{prefix}{i}@example.com,J'accepte,01/06/2020 21:28:{:02},203.0.113.9\n",
            i % 60
        ));
    }
    text
}

#[test]
fn a_file_quarantined_for_its_separator_goes_back_once_the_config_is_fixed() {
    let site = Site::new(IMPORT);
    let daemon = site.start();
    site.drop_file("pr-comma.csv", comma_rows("c", 10).as_bytes());
    // Dates that no config of this import reads: it must stay.
    site.drop_file(
        "pr-dates.csv",
        b"a@example.com,x,2020-06-01,203.0.113.9\nb@example.com,x,2020-06-01,203.0.113.9\n",
    );
    let failed = site.state.join("failed");
    assert!(
        wait_until(LONG, || failed.join("pr-comma.csv").exists()
            && failed.join("pr-dates.csv").exists()),
        "{}",
        site.log()
    );

    // With today's config, nothing goes back.
    let output = site
        .command()
        .args(["retry", "--all", "-c"])
        .arg(&site.config)
        .output()
        .expect("retry");
    assert_eq!(output.status.code(), Some(1));
    assert!(failed.join("pr-comma.csv").exists());

    // Fix the separator.
    ConfigDoc::read(&site.config)
        .change("import[0].separator", ",")
        .write(&site.config);
    daemon.signal(libc::SIGHUP);
    assert!(
        wait_until(LONG, || site.log().contains("configuration reloaded")),
        "{}",
        site.log()
    );

    let output = site
        .command()
        .args(["retry", "-c"])
        .arg(&site.config)
        .args(["failed/pr-comma.csv", "failed/pr-dates.csv"])
        .output()
        .expect("retry");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("failed/pr-comma.csv: back in the drop folder"),
        "{text}"
    );
    assert!(
        text.contains("failed/pr-dates.csv: stays in failed/: would still be quarantined")
            && text.contains("line 1"),
        "{text}"
    );
    assert!(!failed.join("pr-comma.csv").exists());
    assert!(
        failed.join("pr-comma.csv.report.json").exists(),
        "the old report stays"
    );
    assert!(failed.join("pr-dates.csv").exists());

    assert!(
        wait_until(LONG, || site
            .reports("archive")
            .iter()
            .any(|report| report["file_name"] == "pr-comma.csv")),
        "{}",
        site.log()
    );
    daemon.stop_cleanly();
    let comma: Vec<String> = site
        .status(20)
        .iter()
        .filter(|occurrence| occurrence["file_name"] == "pr-comma.csv")
        .map(|occurrence| {
            occurrence["status"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(comma, vec!["archived".to_string(), "failed".to_string()]);
    assert_eq!(site.outbox_events().len(), 10);
}

#[test]
fn retry_never_overwrites_a_file_of_the_drop_folder_and_refuses_other_folders() {
    let site = Site::new(IMPORT);
    let failed = site.state.join("failed");
    std::fs::create_dir_all(&failed).expect("failed");
    std::fs::create_dir_all(site.state.join("archive")).expect("archive");
    let good = "a@example.com;x;01/06/2020 21:28:00;203.0.113.9\n";
    std::fs::write(failed.join("pr-same.csv"), good).expect("write");
    std::fs::write(site.drop.join("pr-same.csv"), "other").expect("write");
    let output = site
        .command()
        .args(["retry", "-c"])
        .arg(&site.config)
        .arg("failed/pr-same.csv")
        .output()
        .expect("retry");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("not overwritten"), "{text}");
    assert_eq!(
        std::fs::read_to_string(site.drop.join("pr-same.csv")).expect("read"),
        "other"
    );
    assert!(failed.join("pr-same.csv").exists());

    std::fs::write(site.state.join("archive").join("pr-x.csv"), good).expect("write");
    let output = site
        .command()
        .args(["retry", "-c"])
        .arg(&site.config)
        .arg("archive/pr-x.csv")
        .output()
        .expect("retry");
    assert_eq!(output.status.code(), Some(2), "only files of failed/");
    assert!(site.state.join("archive").join("pr-x.csv").exists());
}
