//! sink: hands batches of encoded events to their destination and says,
//! batch by batch and in order, which ones are durably acknowledged.
//!
//! Two destinations: [`file`] (NDJSON files, acknowledged by fsync) and
//! [`http`] (the consents API, acknowledged by a 2xx). A sink never decides
//! what a file's outcome is and never touches the journal: it only reports
//! [`Ack`]s, and an ack is only ever given for what is really delivered.

pub mod file;
pub mod http;

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::config::SinkSettings;
use crate::metrics::Metrics;

/// The batches of one import occurrence go to one delivery.
#[derive(Debug, Clone)]
pub struct DeliveryTarget {
    pub occurrence_id: String,
    pub import: String,
    /// Adds `$disable_integrations=true` to the API requests.
    pub disable_integrations: bool,
    /// The import's effective organization (`?organization_id=` of the API
    /// requests); None: the sink's.
    pub organization_id: Option<String>,
    /// File-sink output name stem, e.g. `20261123T145500Z_newsletter-proofs_<occurrence>`.
    pub output_stem: String,
}

/// Up to `batch_size` events, already encoded as JSON objects, in row order.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Position of the batch within its occurrence, from 0.
    pub seq: u64,
    /// The events' JSON texts, each followed by a newline (so that the
    /// buffer is already NDJSON).
    pub buf: Vec<u8>,
    pub events: Vec<EventSpan>,
}

/// Where one event sits in [`Batch::buf`], and the source line it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSpan {
    pub line: u64,
    pub start: usize,
    pub end: usize,
}

impl Batch {
    pub fn new(seq: u64) -> Batch {
        Batch {
            seq,
            buf: Vec::new(),
            events: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The JSON of event `index`.
    pub fn event(&self, index: usize) -> &[u8] {
        let span = self.events[index];
        &self.buf[span.start..span.end]
    }

    /// Appends one event: `write` writes its JSON into the buffer.
    pub fn push_with(&mut self, line: u64, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.buf.len();
        write(&mut self.buf);
        let end = self.buf.len();
        self.buf.push(b'\n');
        self.events.push(EventSpan { line, start, end });
    }

    /// The events as NDJSON, one per line.
    pub fn ndjson(&self) -> &[u8] {
        &self.buf
    }
}

/// A batch (and every one before it) is durably delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub seq: u64,
    /// Sink-specific resume point (the file sink: bytes written so far).
    pub cursor: u64,
    /// Events of this batch the receiver refused, with its message.
    pub refused: Vec<Refusal>,
}

pub use crate::journal::Refusal;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the sink cannot start: {0}")]
    Setup(String),
    #[error("stopped before the delivery finished")]
    Interrupted,
}

/// A configured destination, shared by all files.
#[derive(Debug, Clone)]
pub enum Sink {
    File(file::FileSink),
    Http(http::HttpSink),
}

impl Sink {
    /// `shutdown` interrupts retries and waits; the http sink counts into `metrics`.
    pub fn from_settings(
        settings: &SinkSettings,
        shutdown: CancellationToken,
        metrics: Metrics,
    ) -> Result<Sink, SinkError> {
        Ok(match settings {
            SinkSettings::File(file) => Sink::File(file::FileSink::new(file.clone())?),
            SinkSettings::Http(http) => {
                Sink::Http(http::HttpSink::new(http.clone(), shutdown, metrics)?)
            }
        })
    }

    /// Starts (or, with `resume_cursor` from the last ack, resumes) one occurrence.
    pub async fn open(
        &self,
        target: &DeliveryTarget,
        resume_cursor: Option<u64>,
    ) -> Result<Delivery, SinkError> {
        Ok(match self {
            Sink::File(sink) => Delivery::File(sink.open(target, resume_cursor).await?),
            Sink::Http(sink) => Delivery::Http(sink.open(target)?),
        })
    }

    /// Whether a file's events may be handed over while it is validated,
    /// in the same read: the file sink's stay in a file no consumer reads
    /// until [`Delivery::finish`], and [`Delivery::abandon`] removes them.
    /// Never the API's: nothing is sent from a file that is quarantined.
    pub fn stages(&self) -> bool {
        matches!(self, Sink::File(_))
    }

    /// A file is on its way to delivery to `organization_id` (the import's;
    /// None: the sink's) with `disable_integrations`: until the returned
    /// guard is dropped, the http sink holds requests of that destination
    /// that are not full for its events. Drop it once its delivery is open
    /// and producing, or when the file ends without one; never hold it
    /// across a wait on the sink.
    pub fn coming(&self, organization_id: Option<&str>, disable_integrations: bool) -> Coming {
        Coming {
            _guard: match self {
                Sink::File(_) => None,
                Sink::Http(sink) => sink.coming(organization_id, disable_integrations),
            },
        }
    }

    /// At start and on SIGHUP: the API sink checks in the background that
    /// the organizations have the purposes the imports map (warnings only).
    pub fn check_purposes(&self, imports: &[std::sync::Arc<crate::config::Import>]) {
        if let Sink::Http(sink) = self {
            sink.spawn_purpose_check(imports.to_vec());
        }
    }

    /// Called on SIGHUP: credentials may have been fixed, so stop waiting and try again now.
    pub fn credentials_changed(&self) {
        if let Sink::Http(sink) = self {
            sink.credentials_changed();
        }
    }
}

/// See [`Sink::coming`].
#[derive(Debug)]
pub struct Coming {
    /// Held for its `Drop`.
    _guard: Option<http::Coming>,
}

/// The delivery of one occurrence's batches, in order.
#[derive(Debug)]
pub enum Delivery {
    File(file::FileDelivery),
    Http(http::HttpDelivery),
}

impl Delivery {
    /// The delivery waits for its next batch from its reader: the http sink
    /// holds a request that is not full for it (nothing else waits for it).
    pub fn producing(&mut self) {
        if let Delivery::Http(delivery) = self {
            delivery.producing();
        }
    }

    /// Hands over the next batch (seq strictly increasing). Returns the acks
    /// that became final, in order, possibly for earlier batches. May wait
    /// while the sink applies back-pressure.
    pub async fn send(&mut self, batch: Batch) -> Result<Vec<Ack>, SinkError> {
        match self {
            Delivery::File(delivery) => delivery.send(batch).await,
            Delivery::Http(delivery) => delivery.send(batch).await,
        }
    }

    /// Hands over the next batches of `run` (seq strictly increasing) and
    /// returns the acks that became final, as [`Delivery::send`]: the file
    /// sink takes the whole run, written with one call; the http sink takes
    /// one batch, so that the caller records its acks as they come rather
    /// than after the run.
    pub async fn send_from(
        &mut self,
        run: &mut std::vec::IntoIter<Batch>,
    ) -> Result<Vec<Ack>, SinkError> {
        match self {
            Delivery::File(delivery) => delivery.send_run(run.collect()).await,
            Delivery::Http(delivery) => match run.next() {
                Some(batch) => delivery.send(batch).await,
                None => Ok(Vec::new()),
            },
        }
    }

    /// Shutdown: makes durable what can be, without completing the
    /// occurrence (the file sink keeps its `.partial` file), and returns the
    /// acks. Batches not acknowledged are sent again on resume.
    pub async fn checkpoint(&mut self) -> (Vec<Ack>, Result<(), SinkError>) {
        match self {
            Delivery::File(delivery) => match delivery.checkpoint().await {
                Ok(acks) => (acks, Ok(())),
                Err(err) => (Vec::new(), Err(err)),
            },
            Delivery::Http(delivery) => delivery.finish().await,
        }
    }

    /// Forgets what was handed over, for a file that failed validation
    /// (only a delivery of a sink that [`Sink::stages`] can).
    pub async fn abandon(self) -> Result<(), SinkError> {
        match self {
            Delivery::File(delivery) => delivery.abandon().await,
            Delivery::Http(_) => Err(SinkError::Setup(
                "an http delivery cannot take back what it sent".into(),
            )),
        }
    }

    /// Delivers everything handed over and returns the remaining acks. On
    /// shutdown it returns the acks it has and `Err(Interrupted)`.
    pub async fn finish(&mut self) -> (Vec<Ack>, Result<(), SinkError>) {
        match self {
            Delivery::File(delivery) => delivery.finish().await,
            Delivery::Http(delivery) => delivery.finish().await,
        }
    }
}
