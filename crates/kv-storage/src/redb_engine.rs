//! The redb engine (placeholder until the file-backed implementation lands).

use std::path::Path;

use crate::engine::{Engine, ExportSummary, GroupId, MetaKey, WriteBatch};
use crate::{Outcome, Record, Result, StorageError};

pub struct RedbEngine;

impl RedbEngine {
    pub fn open(_path: &Path) -> Result<Self> {
        Err(StorageError::Backend("redb engine not built yet".into()))
    }
}

impl Engine for RedbEngine {
    fn write(&self, _: &[WriteBatch]) -> Result<Vec<Vec<Outcome>>> {
        unimplemented!()
    }
    fn read_meta(&self, _: GroupId, _: MetaKey) -> Result<Option<Vec<u8>>> {
        unimplemented!()
    }
    fn log_bounds(&self, _: GroupId) -> Result<Option<(u64, u64)>> {
        unimplemented!()
    }
    fn read_log(&self, _: GroupId, _: u64, _: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        unimplemented!()
    }
    fn get(&self, _: GroupId, _: &[u8]) -> Result<Option<Record>> {
        unimplemented!()
    }
    fn scan(&self, _: GroupId, _: &[u8], _: Option<&[u8]>, _: usize) -> Result<Vec<(Vec<u8>, Record)>> {
        unimplemented!()
    }
    fn export_group(&self, _: GroupId, _: &mut dyn std::io::Write) -> Result<ExportSummary> {
        unimplemented!()
    }
    fn import_group(&self, _: GroupId, _: &mut dyn std::io::Read, _: &[u8]) -> Result<u64> {
        unimplemented!()
    }
    fn drop_group(&self, _: GroupId) -> Result<()> {
        unimplemented!()
    }
    fn groups(&self) -> Result<Vec<GroupId>> {
        unimplemented!()
    }
}
