//! Date formats of SPEC §1.
use chrono::{DateTime, Utc};
use chrono_tz::Tz;

#[derive(Debug, Clone)]
pub struct DateFormat {
    pattern: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DateError {
    #[error("placeholder")]
    Placeholder,
}

impl DateFormat {
    pub fn new(pattern: &str) -> Result<DateFormat, String> {
        Ok(DateFormat {
            pattern: pattern.to_string(),
        })
    }
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
    pub fn parse(&self, _text: &str, _tz: Tz) -> Result<DateTime<Utc>, DateError> {
        todo!()
    }
    pub fn format(&self, _instant: DateTime<Utc>, _tz: Tz) -> String {
        todo!()
    }
}
