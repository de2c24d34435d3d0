//! Events waiting for the broker's PUBACK: the on-disk queue, plus an in-memory fallback for
//! events that the disk could not take.
//!
//! Design: an event whose append fails (disk full, I/O error) is kept in memory under a
//! sequence number from the disk queue's own sequence (`DiskQueue::skip_seq`), so the worker
//! sends disk and memory events in one order, the order of `push`. Each push tries the disk
//! first, so the disk takes events again as soon as it has room. An event that went to disk
//! after one in memory never overtakes it while the process runs. If the process ends
//! first, though, the memory event is lost and the next run sends the disk one.

use super::queue::{DiskQueue, QueueError};
use super::Queued;
use log::{error, info, warn};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;

/// Maximum number of events in the in-memory fallback; [`EventQueue`] has the byte limit.
///
/// Trade-off: with events of about 350 bytes this is about 360 KB, hours of gate
/// transitions at a few per minute, while the disk is full and the broker unreachable.
pub const MEMORY_MAX_EVENTS: usize = 1024;

/// Outcome of [`EventQueue::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pushed {
    pub seq: u64,
    pub place: Queued,
    /// Oldest events dropped to make room: from the disk queue at its size limit, or from
    /// the memory fallback at its limits.
    pub dropped: u64,
}

/// The on-disk queue and the in-memory fallback, sent as one sequence.
///
/// The fallback keeps at most [`MEMORY_MAX_EVENTS`] events and at most the disk queue's
/// `max_bytes` of payload. At either limit it drops its oldest events, as the disk queue
/// does. Its events survive broker outages but not the end of the process.
pub(crate) struct EventQueue {
    disk: DiskQueue,
    /// Events whose append failed, by seq; their seqs never appear in `disk`.
    memory: BTreeMap<u64, Vec<u8>>,
    /// Sum of the payload lengths in `memory`, at most `memory_max_bytes`.
    memory_bytes: u64,
    memory_max_bytes: u64,
    /// True from a failed push to the next successful one; only the first failure of such a
    /// burst is logged.
    push_failing: bool,
    /// True from a failed ack until the missing ack records are written; only the first
    /// failure is logged.
    ack_failing: bool,
    /// Events that went to memory since `push_failing` was last set.
    burst_events: u64,
}

impl EventQueue {
    /// Wraps `disk`, whose `max_bytes` also bounds the fallback's payload bytes.
    pub fn new(disk: DiskQueue, max_bytes: u64) -> EventQueue {
        EventQueue {
            disk,
            memory: BTreeMap::new(),
            memory_bytes: 0,
            memory_max_bytes: max_bytes,
            push_failing: false,
            ack_failing: false,
            burst_events: 0,
        }
    }

    /// Appends an event to the disk queue, or keeps it in memory when the write fails.
    ///
    /// Returns the errors of `DiskQueue::push` other than a failed write, such as
    /// [`QueueError::TooLarge`]; nothing is stored then. Logs the first failed write of a
    /// burst at error with the OS error, and the first successful one after it at info.
    pub fn push(&mut self, payload: &[u8]) -> Result<Pushed, QueueError> {
        let error = match self.disk.push(payload) {
            Ok(pushed) => {
                self.push_succeeded();
                return Ok(Pushed {
                    seq: pushed.seq,
                    place: Queued::Disk,
                    dropped: pushed.dropped,
                });
            }
            Err(error @ QueueError::Write { .. }) => error,
            Err(error) => return Err(error),
        };

        if !self.push_failing {
            self.push_failing = true;
            self.burst_events = 0;
            error!(
                "{error}. Meanwhile new events are kept in memory (at most {MEMORY_MAX_EVENTS} \
                 events or {} bytes) and sent in order: they survive broker outages but are \
                 lost if gradgate stops before the broker acknowledges them. Further failed \
                 writes are not logged until one succeeds",
                self.memory_max_bytes
            );
        }
        self.burst_events += 1;
        let seq = self.disk.skip_seq();
        let dropped = self.make_room(payload.len() as u64, seq);
        self.memory.insert(seq, payload.to_vec());
        self.memory_bytes += payload.len() as u64;
        Ok(Pushed {
            seq,
            place: Queued::Memory,
            dropped,
        })
    }

    /// Drops the oldest memory events until one more of `incoming` bytes fits; returns how
    /// many it dropped.
    fn make_room(&mut self, incoming: u64, seq: u64) -> u64 {
        let mut dropped = 0;
        while self.memory.len() >= MEMORY_MAX_EVENTS
            || self.memory_bytes + incoming > self.memory_max_bytes
        {
            let Some((oldest, payload)) = self.memory.pop_first() else {
                break;
            };
            self.memory_bytes -= payload.len() as u64;
            dropped += 1;
            warn!(
                "in-memory event queue is full ({MEMORY_MAX_EVENTS} events or {} bytes, while \
                 {} cannot be written): dropped oldest event seq {oldest} to make room for seq \
                 {seq}",
                self.memory_max_bytes,
                self.disk.path().display()
            );
        }
        dropped
    }

    /// Ends a burst of failed pushes; a push also writes the missing ack records.
    fn push_succeeded(&mut self) {
        if self.push_failing {
            self.push_failing = false;
            info!(
                "event queue {} is writable again; {} event(s) went to memory while it was \
                 not, and {} of them still wait there for the broker",
                self.disk.path().display(),
                self.burst_events,
                self.memory.len()
            );
        }
        self.ack_succeeded();
    }

    /// Ends a burst of failed acks once their records are written. A successful ack does
    /// not end a burst of failed pushes: a 21-byte ack record can fit where an event does not.
    fn ack_succeeded(&mut self) {
        if self.ack_failing && self.disk.unwritten_acks() == 0 {
            self.ack_failing = false;
            info!(
                "event queue {}: the acknowledgements that could not be written are written \
                 now",
                self.disk.path().display()
            );
        }
    }

    /// First event with seq > `after` (None: the first), on disk or in memory, in seq order.
    pub fn next_after(&self, after: Option<u64>) -> Option<(u64, &[u8])> {
        let lower = match after {
            Some(seq) => Bound::Excluded(seq),
            None => Bound::Unbounded,
        };
        let in_memory = self
            .memory
            .range((lower, Bound::Unbounded))
            .next()
            .map(|(&seq, payload)| (seq, payload.as_slice()));
        match (self.disk.next_after(after), in_memory) {
            (Some(disk), Some(memory)) => Some(if disk.0 < memory.0 { disk } else { memory }),
            (disk, memory) => disk.or(memory),
        }
    }

    /// Removes event `seq`, which the broker acknowledged (or which is dropped).
    ///
    /// A memory event just leaves memory. For a disk event a failed write is logged at error
    /// the first time, and the event still leaves the queue (see `DiskQueue::ack`).
    pub fn ack(&mut self, seq: u64) {
        if let Some(payload) = self.memory.remove(&seq) {
            self.memory_bytes -= payload.len() as u64;
            return;
        }
        match self.disk.ack(seq) {
            Ok(()) => self.ack_succeeded(),
            Err(error) => {
                if !self.ack_failing {
                    self.ack_failing = true;
                    error!(
                        "broker acknowledged event {seq}, but {error}. The acknowledgement is \
                         written with the next successful write; if gradgate stops before \
                         that, the next start sends such events again. Further failed \
                         acknowledgements are not logged until one is written"
                    );
                }
            }
        }
    }

    /// Returns the number of events waiting, on disk and in memory.
    pub fn len(&self) -> usize {
        self.disk.len() + self.memory.len()
    }

    /// Returns the number of events waiting on disk.
    pub fn disk_len(&self) -> usize {
        self.disk.len()
    }

    /// Returns the number of events waiting in memory.
    pub fn memory_len(&self) -> usize {
        self.memory.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns the queue file's path.
    pub fn path(&self) -> &Path {
        self.disk.path()
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_disk::TinyDisk;
    use super::*;
    use std::fs;

    const ROOMY: u64 = 1 << 20;

    fn event(n: u64) -> Vec<u8> {
        format!(r#"{{"event":"start","n":{n}}}"#).into_bytes()
    }

    /// Payloads in the order `next_after` returns them.
    fn waiting(queue: &EventQueue) -> Vec<Vec<u8>> {
        let mut payloads = Vec::new();
        let mut last = None;
        while let Some((seq, payload)) = queue.next_after(last) {
            payloads.push(payload.to_vec());
            last = Some(seq);
        }
        payloads
    }

    #[test]
    fn disk_and_memory_keep_push_order() {
        let Some(disk) = TinyDisk::mount() else {
            return;
        };
        let mut queue = EventQueue::new(DiskQueue::open(disk.path(), "cam", ROOMY).unwrap(), ROOMY);
        // Fill the file's first page, so that every later record needs a new one.
        let first = vec![b'x'; disk.page as usize - 20 - 21];
        assert_eq!(queue.push(&first).unwrap().place, Queued::Disk);
        let filler = disk.fill();

        let second = queue.push(&event(2)).unwrap();
        let third = queue.push(&event(3)).unwrap();
        fs::remove_file(filler).unwrap();
        let fourth = queue.push(&event(4)).unwrap();

        assert_eq!(second.place, Queued::Memory);
        assert_eq!(third.place, Queued::Memory);
        assert_eq!(fourth.place, Queued::Disk);
        assert_eq!(waiting(&queue), vec![first, event(2), event(3), event(4)]);
        assert_eq!(queue.len(), 4);
        assert_eq!(queue.memory_len(), 2);
        assert_eq!(queue.disk_len(), 2);

        queue.ack(third.seq);
        assert_eq!(queue.memory_len(), 1);
        assert_eq!(
            queue.next_after(Some(second.seq)).map(|(seq, _)| seq),
            Some(fourth.seq)
        );
    }

    #[test]
    fn memory_fallback_drops_oldest_at_event_limit() {
        let Some(disk) = TinyDisk::mount() else {
            return;
        };
        let mut queue = EventQueue::new(DiskQueue::open(disk.path(), "cam", ROOMY).unwrap(), ROOMY);
        queue
            .push(&vec![b'x'; disk.page as usize - 20 - 21])
            .unwrap();
        disk.fill();

        let mut dropped = 0;
        for n in 0..MEMORY_MAX_EVENTS as u64 + 3 {
            let pushed = queue.push(&event(n)).unwrap();
            assert_eq!(pushed.place, Queued::Memory, "event {n}");
            dropped += pushed.dropped;
        }

        assert_eq!(dropped, 3);
        assert_eq!(queue.memory_len(), MEMORY_MAX_EVENTS);
        // After the disk event come the memory events, from event 3 on.
        let payloads = waiting(&queue);
        assert_eq!(payloads[1], event(3));
        assert_eq!(payloads.last(), Some(&event(MEMORY_MAX_EVENTS as u64 + 2)));
    }

    #[test]
    fn memory_fallback_drops_oldest_at_byte_limit() {
        let Some(disk) = TinyDisk::mount() else {
            return;
        };
        // Room for three 300-byte payloads in memory.
        let disk_queue = DiskQueue::open(disk.path(), "cam", ROOMY).unwrap();
        let mut queue = EventQueue::new(disk_queue, 1000);
        queue
            .push(&vec![b'x'; disk.page as usize - 20 - 21])
            .unwrap();
        disk.fill();

        let payload = |n: u8| vec![n; 300];
        let pushed: Vec<Pushed> = (1..=4).map(|n| queue.push(&payload(n)).unwrap()).collect();

        assert!(
            pushed.iter().all(|p| p.place == Queued::Memory),
            "{pushed:?}"
        );
        assert_eq!(
            pushed.iter().map(|p| p.dropped).collect::<Vec<_>>(),
            vec![0, 0, 0, 1]
        );
        assert_eq!(waiting(&queue)[1..], [payload(2), payload(3), payload(4)]);
    }
}
