//! Request bodies without copies: a batch's buffer is frozen once, when it
//! is queued, into shared bytes whose events are separated by commas, so
//! that any run of its events is the content of a JSON array. A body (a
//! whole batch, a slice of one, several files' slices, a bisected half) is
//! then `[`, those runs joined by `,`, and `]`: a list of chunks that all
//! point into the batches' own buffers, written to the socket as they are
//! (one vectored write), with its exact length announced.
//!
//! Never: copy an event to build a plain body; change an event's bytes.

use std::collections::VecDeque;
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use hyper::body::{Frame, SizeHint};

use crate::sink::{Batch, EventSpan};

const OPEN: Bytes = Bytes::from_static(b"[");
const COMMA: Bytes = Bytes::from_static(b",");
const CLOSE: Bytes = Bytes::from_static(b"]");

/// A batch as requests take it: its events in one shared buffer, each
/// followed by a comma instead of the batch's newline.
pub(super) struct Events {
    /// Position of the batch within its occurrence.
    pub seq: u64,
    bytes: Bytes,
    /// Where each event sits in `bytes`, and its source line.
    pub events: Vec<EventSpan>,
}

impl Events {
    /// Takes over the batch's buffer. Events written back to back (as
    /// [`Batch::push_with`] writes them) keep it as it is but for the
    /// separators; any other layout is laid out again.
    pub fn new(batch: Batch) -> Events {
        let Batch { seq, buf, events } = batch;
        let back_to_back = events
            .windows(2)
            .all(|pair| pair[0].end + 1 == pair[1].start)
            && events.last().is_none_or(|last| last.end < buf.len());
        let (mut buf, events) = if back_to_back {
            (buf, events)
        } else {
            lay_out(&buf, &events)
        };
        for span in &events {
            buf[span.end] = b',';
        }
        Events {
            seq,
            bytes: Bytes::from(buf),
            events,
        }
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// The source line of event `index`.
    pub fn line(&self, index: usize) -> u64 {
        self.events[index].line
    }

    /// Events `start..end` (not empty) joined by commas, without a copy.
    fn run(&self, start: usize, end: usize) -> Bytes {
        self.bytes
            .slice(self.events[start].start..self.events[end - 1].end)
    }

    #[cfg(test)]
    pub fn event(&self, index: usize) -> &[u8] {
        let span = self.events[index];
        &self.bytes[span.start..span.end]
    }
}

/// The events copied back to back, each followed by one separator byte.
fn lay_out(buf: &[u8], events: &[EventSpan]) -> (Vec<u8>, Vec<EventSpan>) {
    let size: usize = events.iter().map(|span| span.end - span.start + 1).sum();
    let mut out = Vec::with_capacity(size);
    let spans = events
        .iter()
        .map(|span| {
            let start = out.len();
            out.extend_from_slice(&buf[span.start..span.end]);
            let end = out.len();
            out.push(b'\n');
            EventSpan {
                line: span.line,
                start,
                end,
            }
        })
        .collect();
    (out, spans)
}

/// A JSON array of runs of events, as chunks.
#[derive(Default)]
pub(super) struct Json {
    chunks: Vec<Bytes>,
    len: usize,
}

impl Json {
    /// Adds events `start..end` (not empty) of `events` to the array.
    pub fn push(&mut self, events: &Events, start: usize, end: usize) {
        self.chunk(if self.chunks.is_empty() { OPEN } else { COMMA });
        self.chunk(events.run(start, end));
    }

    fn chunk(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        self.chunks.push(chunk);
    }

    /// The array, closed.
    pub fn finish(mut self) -> Json {
        if self.chunks.is_empty() {
            self.chunk(OPEN);
        }
        self.chunk(CLOSE);
        self
    }

    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<u8> {
        self.chunks.concat()
    }
}

/// A request body as it goes on the wire, for every attempt.
pub(super) struct Payload {
    chunks: Vec<Bytes>,
    len: usize,
    pub gzipped: bool,
}

impl Payload {
    /// The JSON, gzip-compressed when the config asks for it. The fastest
    /// level: JSON events still shrink several-fold, and the CPU is better
    /// spent reading the next rows.
    pub fn new(json: Json, gzip: bool) -> Payload {
        if gzip {
            if let Some(compressed) = compress(&json) {
                return Payload {
                    len: compressed.len(),
                    chunks: vec![compressed],
                    gzipped: true,
                };
            }
        }
        // Compressing into memory does not fail; if it ever did, the plain
        // body is still a correct request.
        Payload {
            chunks: json.chunks,
            len: json.len,
            gzipped: false,
        }
    }

    /// The body of one attempt: the chunks shared, their length exact.
    pub fn body(&self) -> reqwest::Body {
        match self.chunks.as_slice() {
            [one] => reqwest::Body::from(one.clone()),
            chunks => reqwest::Body::wrap(Chunks {
                chunks: chunks.iter().cloned().collect(),
                remaining: self.len as u64,
            }),
        }
    }

    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<u8> {
        self.chunks.concat()
    }
}

fn compress(json: &Json) -> Option<Bytes> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(json.len / 4), Compression::fast());
    for chunk in &json.chunks {
        encoder.write_all(chunk).ok()?;
    }
    encoder.finish().ok().map(Bytes::from)
}

/// Chunks handed to the connection one frame each.
struct Chunks {
    chunks: VecDeque<Bytes>,
    remaining: u64,
}

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let next = self.chunks.pop_front();
        if let Some(chunk) = &next {
            self.remaining -= chunk.len() as u64;
        }
        Poll::Ready(next.map(|chunk| Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn batch(ids: &[u64]) -> Batch {
        let mut batch = Batch::new(3);
        for &id in ids {
            batch.push_with(id + 1, |buf| {
                buf.extend_from_slice(format!("{{\"id\":{id}}}").as_bytes())
            });
        }
        batch
    }

    #[test]
    fn any_run_of_a_batch_is_an_array_without_a_copy() {
        let events = Events::new(batch(&[1, 2, 3]));
        assert_eq!((events.seq, events.len(), events.line(2)), (3, 3, 4));
        assert_eq!(events.event(1), br#"{"id":2}"#);
        let mut json = Json::default();
        json.push(&events, 0, 3);
        let json = json.finish();
        assert_eq!(json.to_vec(), br#"[{"id":1},{"id":2},{"id":3}]"#);
        // The run points into the batch's own buffer.
        assert_eq!(json.chunks[1].as_ptr(), events.bytes.as_ptr());
        let mut json = Json::default();
        json.push(&events, 1, 2);
        json.push(&Events::new(batch(&[7, 8])), 0, 2);
        assert_eq!(json.finish().to_vec(), br#"[{"id":2},{"id":7},{"id":8}]"#);
        assert_eq!(Json::default().finish().to_vec(), b"[]");
    }

    #[test]
    fn events_not_back_to_back_are_laid_out_again() {
        let buf = br#"xx{"id":1}yy{"id":2}"#.to_vec();
        let batch = Batch {
            seq: 0,
            buf,
            events: vec![
                EventSpan {
                    line: 2,
                    start: 2,
                    end: 10,
                },
                EventSpan {
                    line: 3,
                    start: 12,
                    end: 20,
                },
            ],
        };
        let events = Events::new(batch);
        let mut json = Json::default();
        json.push(&events, 0, 2);
        assert_eq!(json.finish().to_vec(), br#"[{"id":1},{"id":2}]"#);
        assert_eq!(events.event(1), br#"{"id":2}"#);
    }

    #[tokio::test]
    async fn a_body_of_chunks_announces_its_exact_length() {
        let mut json = Json::default();
        json.push(&Events::new(batch(&[1, 2])), 0, 2);
        json.push(&Events::new(batch(&[3])), 0, 1);
        let payload = Payload::new(json.finish(), false);
        let expected = br#"[{"id":1},{"id":2},{"id":3}]"#;
        for _ in 0..2 {
            let body = payload.body();
            assert_eq!(
                hyper::body::Body::size_hint(&body).exact(),
                Some(expected.len() as u64)
            );
            let sent = body.collect().await.expect("body").to_bytes();
            assert_eq!(&sent[..], expected);
        }
    }

    #[test]
    fn gzip_bodies_decompress_to_the_same_json() {
        use std::io::Read;
        let ids: Vec<u64> = (0..100).collect();
        let json = || {
            let mut json = Json::default();
            json.push(&Events::new(batch(&ids)), 0, 100);
            json.finish()
        };
        let plain = Payload::new(json(), false);
        assert!(!plain.gzipped);
        let gzipped = Payload::new(json(), true);
        assert!(gzipped.gzipped);
        let compressed = gzipped.to_vec();
        assert!(
            compressed.len() < plain.to_vec().len() / 4,
            "{}",
            compressed.len()
        );
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&compressed[..])
            .read_to_end(&mut decoded)
            .expect("valid gzip");
        assert_eq!(decoded, plain.to_vec());
    }
}
