//! Sample proof files in an import's exact format.
use std::io::Write;

use super::RowFormat;

pub fn write_sample(_format: &RowFormat, _rows: usize, _out: &mut dyn Write) -> std::io::Result<()> {
    todo!()
}
