//! Stub: the http sink.
use tokio_util::sync::CancellationToken;

use super::{Ack, Batch, DeliveryTarget, SinkError};
use crate::config::HttpSinkSettings;

#[derive(Debug, Clone)]
pub struct HttpSink {
    _settings: HttpSinkSettings,
}

impl HttpSink {
    pub fn new(settings: HttpSinkSettings, _shutdown: CancellationToken) -> Result<HttpSink, SinkError> {
        Ok(HttpSink { _settings: settings })
    }
    pub fn open(&self, _target: &DeliveryTarget) -> HttpDelivery {
        HttpDelivery {}
    }
    pub fn credentials_changed(&self) {}
}

#[derive(Debug)]
pub struct HttpDelivery {}

impl HttpDelivery {
    pub async fn send(&mut self, _batch: Batch) -> Result<Vec<Ack>, SinkError> {
        todo!()
    }
    pub async fn finish(&mut self) -> (Vec<Ack>, Result<(), SinkError>) {
        todo!()
    }
}
