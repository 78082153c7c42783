//! Token patterns (`dd/MM/yyyy HH:mm:ss`, `yyyy-MM-dd'T'HH:mm:ss`, …): the
//! compiler and the fast fixed-offset reader.
//!
//! Owns what a token pattern means: `dd MM yyyy HH mm ss` (each once),
//! literal characters, text in single quotes literal as in Java patterns
//! (`''` is a quote). A pattern is compiled once into byte offsets
//! ([`Layout`]), and a date is then read by checking its length, its literal
//! bytes and its digits at those offsets: exactly two digits (four for
//! `yyyy`), no sign, no padding, none of chrono's leniency.
//!
//! It never checks the calendar or places a time in a zone (that is
//! [`super::zone`]) and allocates nothing per date.
use std::fmt::Write as _;

use chrono::{Datelike, NaiveDateTime, Timelike};

use super::zone::Local;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Token {
    Day,
    Month,
    Year,
    Hour,
    Minute,
    Second,
}

impl Token {
    const ALL: [Token; 6] = [
        Token::Day,
        Token::Month,
        Token::Year,
        Token::Hour,
        Token::Minute,
        Token::Second,
    ];

    fn text(self) -> &'static str {
        match self {
            Token::Day => "dd",
            Token::Month => "MM",
            Token::Year => "yyyy",
            Token::Hour => "HH",
            Token::Minute => "mm",
            Token::Second => "ss",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Token::Day => "day",
            Token::Month => "month",
            Token::Year => "year",
            Token::Hour => "hour",
            Token::Minute => "minute",
            Token::Second => "second",
        }
    }

    fn width(self) -> usize {
        match self {
            Token::Year => 4,
            _ => 2,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Piece {
    Literal(char),
    Token(Token),
}

/// A token pattern compiled to byte offsets.
#[derive(Debug, Clone, Default)]
pub(super) struct Layout {
    len: usize,
    literals: Vec<(usize, u8)>,
    year: usize,
    month: usize,
    day: usize,
    hour: usize,
    minute: usize,
    second: usize,
}

pub(super) fn compile_tokens(pattern: &str) -> Result<Vec<Piece>, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut pieces = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        if c == '\'' {
            i = quoted_literal(pattern, &chars, i, &mut pieces)?;
            continue;
        }
        if !c.is_alphabetic() {
            pieces.push(Piece::Literal(c));
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|&&other| other == c).count();
        let token = match (c, run) {
            ('d', 2) => Token::Day,
            ('M', 2) => Token::Month,
            ('y', 4) => Token::Year,
            ('H', 2) => Token::Hour,
            ('m', 2) => Token::Minute,
            ('s', 2) => Token::Second,
            _ => {
                let bad: String = std::iter::repeat_n(c, run).collect();
                return Err(format!(
                    "{pattern:?}: {bad:?} is not a date token; use dd, MM, yyyy, HH, mm, ss \
                     and literal characters (or a strftime pattern with %)"
                ));
            }
        };
        if pieces
            .iter()
            .any(|p| matches!(p, Piece::Token(t) if *t == token))
        {
            return Err(format!(
                "{pattern:?}: {} appears more than once",
                token.text()
            ));
        }
        pieces.push(Piece::Token(token));
        i += run;
    }
    for token in Token::ALL {
        if !pieces
            .iter()
            .any(|p| matches!(p, Piece::Token(t) if *t == token))
        {
            return Err(format!(
                "{pattern:?} has no {} ({}); a date format needs dd, MM, yyyy, HH, mm and ss",
                token.text(),
                token.name()
            ));
        }
    }
    Ok(pieces)
}

/// Text in single quotes from `chars[open]` is literal, as in Java patterns
/// (`yyyy-MM-dd'T'HH:mm:ss`); `''` is one quote, inside quotes or out.
/// Returns the index after the closing quote.
fn quoted_literal(
    pattern: &str,
    chars: &[char],
    open: usize,
    pieces: &mut Vec<Piece>,
) -> Result<usize, String> {
    if chars.get(open + 1) == Some(&'\'') {
        pieces.push(Piece::Literal('\''));
        return Ok(open + 2);
    }
    let mut i = open + 1;
    loop {
        match (chars.get(i), chars.get(i + 1)) {
            (None, _) => {
                return Err(format!(
                    "{pattern:?}: a quote opens literal text that is never closed; \
                     write '' for a quote character"
                ))
            }
            (Some('\''), Some('\'')) => {
                pieces.push(Piece::Literal('\''));
                i += 2;
            }
            (Some('\''), _) => return Ok(i + 1),
            (Some(&c), _) => {
                pieces.push(Piece::Literal(c));
                i += 1;
            }
        }
    }
}

pub(super) fn layout_of(pieces: &[Piece]) -> Layout {
    let mut layout = Layout::default();
    let mut at = 0;
    for piece in pieces {
        match piece {
            Piece::Literal(c) => {
                let mut utf8 = [0u8; 4];
                for &b in c.encode_utf8(&mut utf8).as_bytes() {
                    layout.literals.push((at, b));
                    at += 1;
                }
            }
            Piece::Token(token) => {
                let slot = match token {
                    Token::Day => &mut layout.day,
                    Token::Month => &mut layout.month,
                    Token::Year => &mut layout.year,
                    Token::Hour => &mut layout.hour,
                    Token::Minute => &mut layout.minute,
                    Token::Second => &mut layout.second,
                };
                *slot = at;
                at += token.width();
            }
        }
    }
    layout.len = at;
    layout
}

/// The six numbers of a date written in the layout's pattern, not yet
/// range-checked; `None` when its shape is not the pattern's.
pub(super) fn read(layout: &Layout, text: &str) -> Option<Local> {
    let bytes = text.as_bytes();
    if bytes.len() != layout.len {
        return None;
    }
    for &(at, byte) in &layout.literals {
        if bytes.get(at) != Some(&byte) {
            return None;
        }
    }
    let digits = |at: usize, width: usize| -> Option<u32> {
        let mut value = 0u32;
        for &b in bytes.get(at..at + width)? {
            let d = b.wrapping_sub(b'0');
            if d > 9 {
                return None;
            }
            value = value * 10 + u32::from(d);
        }
        Some(value)
    };
    Some(Local {
        year: i64::from(digits(layout.year, 4)?),
        month: digits(layout.month, 2)?,
        day: digits(layout.day, 2)?,
        hour: digits(layout.hour, 2)?,
        minute: digits(layout.minute, 2)?,
        second: digits(layout.second, 2)?,
    })
}

/// Writes `local` in the pattern of `pieces`.
pub(super) fn write(pieces: &[Piece], local: NaiveDateTime, out: &mut String) {
    for piece in pieces {
        let _ = match piece {
            Piece::Literal(c) => {
                out.push(*c);
                Ok(())
            }
            Piece::Token(Token::Year) => write!(out, "{:04}", local.year()),
            Piece::Token(Token::Month) => write!(out, "{:02}", local.month()),
            Piece::Token(Token::Day) => write!(out, "{:02}", local.day()),
            Piece::Token(Token::Hour) => write!(out, "{:02}", local.hour()),
            Piece::Token(Token::Minute) => write!(out, "{:02}", local.minute()),
            Piece::Token(Token::Second) => write!(out, "{:02}", local.second()),
        };
    }
}
