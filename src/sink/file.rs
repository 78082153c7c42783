//! Stub.
use super::{Ack, Batch, DeliveryTarget, SinkError};
use crate::config::FileSinkSettings;
#[derive(Debug, Clone)]
pub struct FileSink { _s: FileSinkSettings }
impl FileSink {
    pub fn new(s: FileSinkSettings) -> FileSink { FileSink { _s: s } }
    pub fn open(&self, _t: &DeliveryTarget, _c: Option<u64>) -> Result<FileDelivery, SinkError> { todo!() }
}
#[derive(Debug)]
pub struct FileDelivery {}
impl FileDelivery {
    pub fn send(&mut self, _b: Batch) -> Result<Vec<Ack>, SinkError> { todo!() }
    pub fn finish(&mut self) -> (Vec<Ack>, Result<(), SinkError>) { todo!() }
}
