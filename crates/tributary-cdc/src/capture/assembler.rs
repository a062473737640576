//! Batches of whole transactions out of a stream of pgoutput messages.
//!
//! The assembler is pure (no I/O): the source feeds it decoded messages and asks for a batch
//! when it is full or the stream is momentarily empty. See the module doc of `capture` for
//! why batches end at commit boundaries and what happens with a transaction larger than a
//! batch.

use std::mem;

use tributary_core::OutgoingMessage;

use super::config::HEARTBEAT_PREFIX;
use super::error::{CdcError, Result};
use super::mapping::{Mapped, Mapper, TxContext};
use crate::lsn::Lsn;
use crate::pgoutput::{PgOutputDecoder, PgOutputMessage, PgTimestamp};

/// The transaction being read.
#[derive(Debug)]
struct OpenTx {
    context: TxContext,
    /// The place of the next change in the transaction (part of the event ids).
    next_index: u32,
    /// The highest outbox row id among its messages in the batch.
    outbox_max: Option<i64>,
}

/// What a message meant beyond filling the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing more.
    Continue,
    /// Everything before this position was seen and nothing of it is waiting to be published:
    /// it may be confirmed at once if no batch is in flight (an empty transaction, a
    /// heartbeat).
    Idle(Lsn),
    /// A capture's heartbeat came through the stream: a position like `Idle`, and the sign
    /// that the stream flows end to end.
    Heartbeat(Lsn),
}

/// A batch taken out of the assembler.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Taken {
    pub(crate) messages: Vec<OutgoingMessage>,
    /// The position to confirm once the broker has the batch: the end of its last commit, or
    /// for part of an oversized transaction the position already confirmed (no move).
    pub(crate) through: Lsn,
    /// Part of a transaction larger than a batch.
    pub(crate) partial: bool,
    /// The highest outbox row id in the batch.
    pub(crate) outbox_max: Option<i64>,
    /// The commit time of the last whole transaction in the batch.
    pub(crate) commit_time: Option<PgTimestamp>,
}

/// Collects messages of committed transactions until a batch is taken.
#[derive(Debug, Default)]
pub(crate) struct Assembler {
    /// Messages in commit order; the first `complete` belong to transactions whose Commit was
    /// read, the rest to the open transaction.
    messages: Vec<OutgoingMessage>,
    complete: usize,
    /// The end of the last Commit among the complete messages.
    through: Option<Lsn>,
    commit_time: Option<PgTimestamp>,
    complete_outbox_max: Option<i64>,
    open: Option<OpenTx>,
}

impl Assembler {
    /// Messages waiting, whole transactions and the open one's.
    pub(crate) fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether at least one whole transaction is waiting.
    pub(crate) fn has_complete(&self) -> bool {
        self.through.is_some()
    }

    /// Whether nothing is waiting and no transaction is open: a position seen now covers
    /// nothing unpublished.
    pub(crate) fn is_idle(&self) -> bool {
        self.messages.is_empty() && self.open.is_none()
    }

    /// Takes in one decoded message.
    ///
    /// # Errors
    ///
    /// [`CdcError::Protocol`] for messages out of place (a change outside a transaction, a
    /// Begin inside one), decoding errors of rows, and mapping errors.
    pub(crate) fn apply(
        &mut self,
        message: &PgOutputMessage,
        decoder: &PgOutputDecoder,
        mapper: &Mapper,
    ) -> Result<Step> {
        match message {
            PgOutputMessage::Begin(begin) => {
                if self.open.is_some() {
                    return Err(CdcError::protocol("Begin inside an open transaction"));
                }
                self.open = Some(OpenTx {
                    context: TxContext {
                        xid: begin.xid,
                        commit_lsn: begin.final_lsn,
                        commit_time: begin.commit_time,
                    },
                    next_index: 0,
                    outbox_max: None,
                });
            }
            PgOutputMessage::Commit(commit) => {
                let open = self
                    .open
                    .take()
                    .ok_or_else(|| CdcError::protocol("Commit without Begin"))?;
                if self.messages.is_empty() {
                    // Nothing of it (or of anything before it) waits to be published.
                    return Ok(Step::Idle(commit.end_lsn));
                }
                self.complete = self.messages.len();
                self.through = Some(commit.end_lsn);
                self.commit_time = Some(commit.commit_time);
                self.complete_outbox_max = self.complete_outbox_max.max(open.outbox_max);
            }
            PgOutputMessage::Insert(_)
            | PgOutputMessage::Update(_)
            | PgOutputMessage::Delete(_) => {
                let (context, index) = self.next_change()?;
                let change = decoder
                    .change(message)?
                    .ok_or_else(|| CdcError::protocol("row message without a row"))?;
                if let Some(mapped) = mapper.change(&context, index, &change)? {
                    self.push(mapped);
                }
            }
            PgOutputMessage::Truncate(truncate) => {
                let (context, index) = self.next_change()?;
                let relations = decoder.truncated(truncate)?;
                for mapped in mapper.truncate(&context, index, &relations, truncate)? {
                    self.push(mapped);
                }
            }
            PgOutputMessage::Message(logical) if logical.transactional => {
                let (context, index) = self.next_change()?;
                if let Some(mapped) = mapper.message(&context, index, logical)? {
                    self.push(mapped);
                }
            }
            PgOutputMessage::Message(logical) => {
                // Outside any transaction: written even if the writer's transaction rolls
                // back, so never published (no phantoms). Ours mark progress.
                if logical.prefix == HEARTBEAT_PREFIX {
                    return Ok(Step::Heartbeat(logical.lsn));
                }
                tracing::debug!(
                    prefix = logical.prefix,
                    "ignoring a non-transactional logical message"
                );
            }
            // Relation and Type update the decoder's cache; Origin says nothing we publish.
            _ => {}
        }
        Ok(Step::Continue)
    }

    fn next_change(&mut self) -> Result<(TxContext, u32)> {
        let open = self
            .open
            .as_mut()
            .ok_or_else(|| CdcError::protocol("change outside a transaction"))?;
        let index = open.next_index;
        open.next_index = open.next_index.saturating_add(1);
        Ok((open.context, index))
    }

    fn push(&mut self, mapped: Mapped) {
        if let Some(open) = self.open.as_mut() {
            open.outbox_max = open.outbox_max.max(mapped.outbox_id);
        }
        self.messages.push(mapped.message);
    }

    /// The next batch, if one is ready: every whole transaction waiting (the open one's
    /// messages stay for the next batch), or, when a single open transaction has filled
    /// `max` on its own, that part of it, to be confirmed nowhere (`through = confirmed`).
    pub(crate) fn take(&mut self, max: usize, confirmed: Lsn) -> Option<Taken> {
        if let Some(through) = self.through.take() {
            let open_part = self.messages.split_off(self.complete);
            let messages = mem::replace(&mut self.messages, open_part);
            self.complete = 0;
            return Some(Taken {
                messages,
                through,
                partial: false,
                outbox_max: self.complete_outbox_max.take(),
                commit_time: self.commit_time.take(),
            });
        }
        if self.open.is_some() && self.messages.len() >= max.max(1) {
            let outbox_max = self.open.as_mut().and_then(|open| open.outbox_max.take());
            return Some(Taken {
                messages: mem::take(&mut self.messages),
                through: confirmed,
                partial: true,
                outbox_max,
                commit_time: None,
            });
        }
        None
    }
}
