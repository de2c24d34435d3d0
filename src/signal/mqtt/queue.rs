//! Bounded on-disk queue of events waiting for the MQTT broker's acknowledgement.
//!
//! The MQTT worker pushes each event payload here before it publishes it, and removes the
//! record only when the broker acknowledges the QoS 1 publish (PUBACK). rumqttc keeps its
//! own pending requests in memory only, so this queue is what carries events across a
//! broker outage or a process restart. [`DiskQueue`] is the queue, [`Pushed`] reports what
//! a push did, and [`QueueError`] covers every failure.
//!
//! ```
//! use gradgate::signal::mqtt::queue::DiskQueue;
//!
//! let dir = tempfile::tempdir()?;
//! let mut queue = DiskQueue::open(dir.path(), "cam-01", 1 << 20)?;
//! let pushed = queue.push(br#"{"event":"ood_start"}"#)?;
//!
//! // Publish every pending record in order, remembering which seq each packet carries.
//! let mut last = None;
//! while let Some((seq, payload)) = queue.next_after(last) {
//!     // client.publish(topic, QoS::AtLeastOnce, false, payload) ...
//!     last = Some(seq);
//! }
//!
//! // On the PUBACK for that publish:
//! queue.ack(pushed.seq)?;
//! assert!(queue.is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Files
//! `open(dir, name, ..)` uses three files in `dir`: `NAME.queue` (the records),
//! `NAME.queue.tmp` (exists only during a compaction) and `NAME.lock` (the exclusive lock,
//! containing the owner's process id). The lock file stays after the queue closes, because
//! only the lock on it matters. All integers are little-endian.
//!
//! ```text
//! file header, 20 bytes:
//!   0        4          6           8              16       20
//!   | "GGEQ" | version  | reserved  | next_seq     | crc32  |
//!   | magic  | u16 = 1  | u16 = 0   | u64          | of 0..16
//!
//! then records, back to back:
//!   0        4        12     13            17            21            21 + len
//!   | len    | seq    | kind | payload_crc | header_crc  | payload     |
//!   | u32    | u64    | u8   | u32         | crc32 of 0..17 | len bytes |
//!
//! kind 1: event, the payload is the event
//! kind 2: ack,   event `seq` was acknowledged by the broker (len = 0)
//! kind 3: drop,  event `seq` was dropped at the size limit (len = 0)
//! ```
//!
//! `next_seq` in the file header is a lower bound for the next sequence number. It keeps
//! numbers increasing after a compaction has removed every record.
//!
//! # Durability
//! - [`DiskQueue::push`] and [`DiskQueue::ack`] each append one write and call
//!   `sync_data` before they return. A crash therefore loses at most the record being
//!   written.
//! - A write that fails (disk full, I/O error) is truncated away at once, so the file ends
//!   with a complete record again and the next open reports no damage. A failed `push`
//!   returns the error and stores nothing. A failed `ack` still removes the record from the
//!   pending ones and writes its ack record with the next successful write.
//! - On open, an incomplete last record (a crash in the middle of a write) is truncated
//!   away and logged at warn. A damaged record in the middle of the file is skipped and
//!   logged at warn, and the file is then rewritten without it. Neither is an error.
//! - Acknowledged records stay in the file, marked by an ack record, until a compaction
//!   rewrites the pending records to `NAME.queue.tmp`, syncs it, renames it over
//!   `NAME.queue` and syncs the folder.
//!
//! # Size limit
//! `max_bytes` bounds [`DiskQueue::pending_bytes`]: the pending records as stored, each
//! payload plus its 21-byte record header. A push that does not fit drops the OLDEST
//! pending records until it does, because the newest events describe the current state.
//! Each drop is logged at warn with its seq, and the count is returned in
//! [`Pushed::dropped`]. A single payload whose record exceeds `max_bytes` is rejected with
//! [`QueueError::TooLarge`] and changes nothing. Reopening with a smaller limit drops the
//! oldest records the same way ([`DiskQueue::dropped_on_open`]). The file itself stays
//! below about `max_bytes + max(max_bytes, 64 KiB)` plus its 20-byte header.
//!
//! # Important notes
//! - One process per queue: a second [`DiskQueue::open`] of the same `dir` and `name`, from
//!   this process or another, fails with [`QueueError::Locked`] until the first queue is
//!   dropped. Give each device its own queue name or folder.
//! - QoS 1 delivers at least once. A crash between a PUBACK and the end of the matching
//!   [`DiskQueue::ack`] makes that record come back once after the restart, so subscribers
//!   must tolerate duplicates (the event's sequence number identifies one).
//! - `push` and `ack` block for one `sync_data` each, and sometimes for a compaction.
//!   Call them from the MQTT worker, never from the frame loop.
//! - Sequence numbers are the queue's own, not MQTT packet ids. The worker maps each packet
//!   id to the seq it carries when it publishes.
//! - Pending payloads are also kept in memory (at most `max_bytes`), so sending never
//!   reads the file.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};

use log::{debug, info, warn};

/// First bytes of every queue file.
const FILE_MAGIC: [u8; 4] = *b"GGEQ";
/// Format version this code reads and writes.
const FILE_VERSION: u16 = 1;
/// Magic, version, reserved, next_seq and CRC32, in bytes.
const FILE_HEADER_LEN: usize = 20;
/// Length, seq, kind, payload CRC32 and header CRC32, in bytes.
const RECORD_HEADER_LEN: usize = 21;

/// Record kind: the payload is an event.
const KIND_EVENT: u8 = 1;
/// Record kind: the broker acknowledged event `seq`.
const KIND_ACK: u8 = 2;
/// Record kind: event `seq` was dropped at the size limit.
const KIND_DROP: u8 = 3;

/// Sequence number of the first event in a new queue.
const FIRST_SEQ: u64 = 1;

/// Dead bytes (acknowledged or dropped records, ack and drop markers, skipped damage) that a
/// compaction waits for, in bytes.
///
/// Trade-off: a compaction rewrites every pending record and costs two fsyncs (the new file
/// and the folder), while dead bytes only cost disk space. Compacting once dead bytes are
/// both at least this much and more than half the file keeps the file below
/// `2 × pending + 64 KiB`. With 300–600-byte events this is one rewrite per roughly a
/// hundred acknowledged events, instead of one per ack in a queue that is usually empty.
const COMPACT_MIN_DEAD_BYTES: u64 = 64 * 1024;

/// Largest accepted `max_bytes`: the record length field is a `u32`.
const MAX_LIMIT_BYTES: u64 = u32::MAX as u64;

/// Errors of [`DiskQueue`].
///
/// Messages already contain the OS error, so `source()` returns `None`. The `io::Error`
/// itself is in the `error` field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The queue name cannot be used as a file name.
    #[error(
        "invalid event queue name {name:?}: use a plain file name such as the device id, \
         without '/' or NUL"
    )]
    InvalidName {
        /// The name given to [`DiskQueue::open`].
        name: String,
    },
    /// `max_bytes` is outside the range the queue supports.
    #[error(
        "invalid event queue limit of {max_bytes} bytes: set it between {min_bytes} and \
         {max_allowed_bytes} bytes"
    )]
    InvalidLimit {
        /// The limit given to [`DiskQueue::open`].
        max_bytes: u64,
        /// Smallest limit that fits one record with a 1-byte payload.
        min_bytes: u64,
        /// Largest limit the `u32` record length allows.
        max_allowed_bytes: u64,
    },
    /// The queue folder could not be created.
    #[error(
        "cannot create event queue folder {path}: {}; set mqtt.queue_dir to a writable folder",
        os_message(.error)
    )]
    CreateDir {
        /// The folder.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// The queue file or the lock file could not be opened.
    #[error(
        "cannot open event queue file {path}: {}; set mqtt.queue_dir to a writable folder",
        os_message(.error)
    )]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// Another open queue holds the lock.
    #[error(
        "another gradgate process{} is using event queue {path} (lock file {lock_path}); \
         give each process its own device id or mqtt.queue_dir, or stop the other process",
        holder_text(*.holder_pid)
    )]
    Locked {
        /// The queue file.
        path: PathBuf,
        /// The lock file.
        lock_path: PathBuf,
        /// Process id the holder wrote into the lock file, if it could be read.
        holder_pid: Option<u32>,
    },
    /// Locking failed for a reason other than another holder.
    #[error(
        "cannot lock event queue file {path}: {}; set mqtt.queue_dir to a local folder \
         that supports file locks",
        os_message(.error)
    )]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// The queue file could not be read on open.
    #[error(
        "cannot read event queue file {path}: {}; check the disk, or move the file away to \
         start with an empty queue",
        os_message(.error)
    )]
    Read {
        /// The queue file.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// An append, a truncation or the lock file's process id could not be written.
    #[error(
        "cannot write event queue file {path}: {}; free disk space in mqtt.queue_dir or \
         check its permissions",
        os_message(.error)
    )]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// A new queue file could not be created.
    #[error(
        "cannot create event queue file {path}: {}; set mqtt.queue_dir to a writable folder \
         with free space",
        os_message(.error)
    )]
    Create {
        /// The queue file.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// Rewriting the pending records to a new file failed, so the old file stays in use.
    #[error(
        "cannot compact event queue file {path}: {}; free disk space in mqtt.queue_dir",
        os_message(.error)
    )]
    Compact {
        /// The queue file.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// The file at the queue's path was not written by this queue.
    #[error(
        "file {path} is not a gradgate event queue ({reason}); move it away or set \
         mqtt.queue_dir to another folder"
    )]
    NotAQueue {
        /// The file.
        path: PathBuf,
        /// The mismatch, such as the file's first bytes.
        reason: String,
    },
    /// The queue file has a format version this code cannot read.
    #[error(
        "event queue file {path} has format version {found}, but this gradgate reads version \
         {supported}; move the file away or run the gradgate release that wrote it"
    )]
    UnsupportedVersion {
        /// The queue file.
        path: PathBuf,
        /// Version in the file.
        found: u16,
        /// Version this code reads.
        supported: u16,
    },
    /// One payload is larger than the whole queue may hold.
    #[error(
        "event payload of {payload_bytes} bytes ({record_bytes} bytes with its record header) \
         exceeds the event queue limit of {max_bytes} bytes; raise the limit or send \
         smaller events"
    )]
    TooLarge {
        /// Payload length.
        payload_bytes: u64,
        /// Payload plus record header, as counted against the limit.
        record_bytes: u64,
        /// The queue's limit.
        max_bytes: u64,
    },
}

/// Formats an OS error in lower case, as the rest of each message is.
pub(crate) fn os_message(error: &io::Error) -> String {
    let text = error.to_string();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

fn holder_text(holder_pid: Option<u32>) -> String {
    match holder_pid {
        Some(pid) => format!(" (pid {pid})"),
        None => String::new(),
    }
}

/// Outcome of [`DiskQueue::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// Sequence number given to the new record.
    pub seq: u64,
    /// Oldest pending records removed to make room for it.
    pub dropped: u64,
}

/// Bounded, durable, exclusively locked queue of event payloads (see the module docs).
///
/// Design: pending payloads live in a `BTreeMap` keyed by seq. Acks may arrive out of
/// order, and the map removes any seq in O(log n) while iterating in seq order for the
/// sender and for dropping the oldest.
pub struct DiskQueue {
    /// The queue file, `dir/NAME.queue`.
    path: PathBuf,
    /// The folder holding the queue, synced after each rename.
    dir: PathBuf,
    /// `dir/NAME.queue.tmp`, the file a compaction writes before renaming it.
    tmp_path: PathBuf,
    /// The queue file, open for reading and writing. Appends go to `file_len`.
    file: File,
    /// The lock file. Closing it releases the lock, so it lives as long as the queue.
    _lock: File,
    /// Limit on `pending_bytes`.
    max_bytes: u64,
    /// Pending payloads by seq.
    pending: BTreeMap<u64, Vec<u8>>,
    /// Sum of `record_len` over `pending`, never above `max_bytes`.
    pending_bytes: u64,
    /// End of the last complete record in the file, where the next append starts.
    file_len: u64,
    /// Bytes in the file that a compaction would remove: `file_len` minus the file header
    /// minus `pending_bytes`.
    dead_bytes: u64,
    /// Seq the next push gets, above every seq ever handed out for this queue.
    next_seq: u64,
    /// True after a failed append left bytes past `file_len` that could not be truncated at
    /// once. The next append truncates them first.
    tail_dirty: bool,
    /// Seqs acknowledged by the broker whose ack record could not be written. They are no
    /// longer in `pending`; their ack records go out before the next append's records, and a
    /// compaction makes them unnecessary.
    unwritten_acks: Vec<u64>,
    /// Records dropped by `open` because they exceeded `max_bytes`.
    dropped_on_open: u64,
}

impl fmt::Debug for DiskQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskQueue")
            .field("path", &self.path)
            .field("pending", &self.pending.len())
            .field("pending_bytes", &self.pending_bytes)
            .field("max_bytes", &self.max_bytes)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl DiskQueue {
    /// Opens the queue `dir/NAME.queue`, creating `dir` and the file if needed, and takes
    /// its exclusive lock.
    ///
    /// Recovers the pending records of an earlier run in seq order, truncates an incomplete
    /// last record and skips damaged ones (both logged at warn). If the pending records
    /// exceed `max_bytes`, the oldest are dropped and counted in
    /// [`DiskQueue::dropped_on_open`]. `name` is a plain file name, normally the device id.
    /// `max_bytes` limits [`DiskQueue::pending_bytes`].
    ///
    /// Fails with [`QueueError::Locked`] while another `DiskQueue` of the same folder and
    /// name is open, and with [`QueueError::NotAQueue`] or
    /// [`QueueError::UnsupportedVersion`], leaving the file untouched, when `NAME.queue` was
    /// not written by this format.
    pub fn open(dir: &Path, name: &str, max_bytes: u64) -> Result<DiskQueue, QueueError> {
        validate_name(name)?;
        let min_bytes = RECORD_HEADER_LEN as u64 + 1;
        if !(min_bytes..=MAX_LIMIT_BYTES).contains(&max_bytes) {
            return Err(QueueError::InvalidLimit {
                max_bytes,
                min_bytes,
                max_allowed_bytes: MAX_LIMIT_BYTES,
            });
        }
        fs::create_dir_all(dir).map_err(|error| QueueError::CreateDir {
            path: dir.to_path_buf(),
            error,
        })?;

        let path = dir.join(format!("{name}.queue"));
        let tmp_path = dir.join(format!("{name}.queue.tmp"));
        let lock = lock_queue(&dir.join(format!("{name}.lock")), &path)?;
        remove_unfinished_compaction(&tmp_path);

        // A missing file means a new queue. It is created by the same write-then-rename
        // steps as a compaction, so a queue file always starts with a complete header.
        if !path.exists() {
            write_queue_file(dir, &tmp_path, &path, FIRST_SEQ, &BTreeMap::new()).map_err(
                |error| QueueError::Create {
                    path: path.clone(),
                    error,
                },
            )?;
            info!("created event queue {}", path.display());
        }

        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|error| QueueError::Open {
                path: path.clone(),
                error,
            })?;
        let mut queue = DiskQueue {
            path,
            dir: dir.to_path_buf(),
            tmp_path,
            file,
            _lock: lock,
            max_bytes,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            file_len: 0,
            dead_bytes: 0,
            next_seq: FIRST_SEQ,
            tail_dirty: false,
            unwritten_acks: Vec::new(),
            dropped_on_open: 0,
        };
        queue.recover()?;

        info!(
            "opened event queue {}: {} pending events, {} of {} bytes, next seq {}",
            queue.path.display(),
            queue.pending.len(),
            queue.pending_bytes,
            queue.max_bytes,
            queue.next_seq
        );
        Ok(queue)
    }

    /// Appends `payload` as a new record and returns its seq once the record is on disk
    /// (`sync_data`).
    ///
    /// Trade-off: one fsync per event. Events are gate transitions, a few per minute at
    /// most, so durability costs little. An fsync can take tens of milliseconds on an SD
    /// card (an estimate, not measured here), so the frame loop must not call this.
    /// If the record does not fit, the oldest pending records are dropped first (see the
    /// module docs). On error nothing changes, except that the seq is not reused: a failed
    /// write is truncated away at once (see [`DiskQueue::ack`] for the one exception). If
    /// the write reached the file but the sync failed, and the process then crashes before
    /// the truncation, the record can still reappear after the restart.
    pub fn push(&mut self, payload: &[u8]) -> Result<Pushed, QueueError> {
        let record_bytes = record_len(payload.len());
        if record_bytes > self.max_bytes {
            return Err(QueueError::TooLarge {
                payload_bytes: payload.len() as u64,
                record_bytes,
                max_bytes: self.max_bytes,
            });
        }

        // Choose the records to drop before writing, so that a failed write changes nothing.
        let drops = self.oldest_to_drop(record_bytes);
        let mut bytes = Vec::with_capacity(
            (self.unwritten_acks.len() + drops.len()) * RECORD_HEADER_LEN + record_bytes as usize,
        );
        self.encode_unwritten_acks(&mut bytes);
        for &seq in &drops {
            encode_record(&mut bytes, KIND_DROP, seq, &[]);
        }
        let seq = self.next_seq;
        encode_record(&mut bytes, KIND_EVENT, seq, payload);

        // A failed append may leave this seq on disk past `file_len`, so it is never reused.
        self.next_seq += 1;
        self.append(&bytes)?;
        self.unwritten_acks_written();

        for &dropped in &drops {
            let dropped_bytes = self.remove_pending(dropped);
            warn!(
                "event queue {} is full ({} bytes): dropped oldest event seq {} ({} bytes) \
                 to make room for seq {}",
                self.path.display(),
                self.max_bytes,
                dropped,
                dropped_bytes,
                seq
            );
        }
        self.dead_bytes += (drops.len() * RECORD_HEADER_LEN) as u64;
        self.pending.insert(seq, payload.to_vec());
        self.pending_bytes += record_bytes;
        self.compact_if_worthwhile();

        Ok(Pushed {
            seq,
            dropped: drops.len() as u64,
        })
    }

    /// First pending (unacked) record with seq > `after` (None: the first pending), in seq
    /// order.
    pub fn next_after(&self, after: Option<u64>) -> Option<(u64, &[u8])> {
        let lower = match after {
            Some(seq) => Bound::Excluded(seq),
            None => Bound::Unbounded,
        };
        self.pending
            .range((lower, Bound::Unbounded))
            .next()
            .map(|(&seq, payload)| (seq, payload.as_slice()))
    }

    /// Marks record `seq` as delivered, durably (`sync_data`) before returning.
    ///
    /// An unknown or already acknowledged `seq` is a no-op that returns `Ok`. Acks may come
    /// in any order.
    ///
    /// On a write error the record still leaves the pending records, because the broker
    /// has it, and the error is returned. Its ack record is written before the records of
    /// the next successful [`DiskQueue::push`] or `ack` (or made unnecessary by a
    /// compaction). If the process ends before that, the file still lists the record as
    /// pending, and the next run sends it again: a duplicate, which QoS 1 allows.
    pub fn ack(&mut self, seq: u64) -> Result<(), QueueError> {
        if !self.pending.contains_key(&seq) {
            return Ok(());
        }

        let mut bytes = Vec::with_capacity((self.unwritten_acks.len() + 1) * RECORD_HEADER_LEN);
        self.encode_unwritten_acks(&mut bytes);
        encode_record(&mut bytes, KIND_ACK, seq, &[]);
        let written = self.append(&bytes);

        self.remove_pending(seq);
        if let Err(error) = written {
            self.unwritten_acks.push(seq);
            return Err(error);
        }
        self.unwritten_acks_written();
        self.dead_bytes += RECORD_HEADER_LEN as u64;
        self.compact_if_worthwhile();
        Ok(())
    }

    /// Hands out the next sequence number without writing a record; later pushes get
    /// higher numbers.
    ///
    /// For an event kept outside the file (in memory while the disk is full), so that it
    /// sorts with the queued events. The number is not stored: after a restart, before any
    /// push, it can be handed out again.
    pub fn skip_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Returns the number of acknowledged records whose ack record is not yet written,
    /// because the last writes failed. Until it is 0, a restart sends them again.
    pub fn unwritten_acks(&self) -> usize {
        self.unwritten_acks.len()
    }

    /// Returns the number of pending records.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Returns true when no record is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Returns the bytes the pending records take in the file, record headers included.
    /// This is what `max_bytes` limits.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// Returns the queue file's path, `dir/NAME.queue`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the number of records [`DiskQueue::open`] dropped because the recovered records exceeded
    /// `max_bytes` (a smaller limit than the previous run's).
    pub fn dropped_on_open(&self) -> u64 {
        self.dropped_on_open
    }

    /// Reads the queue file into memory and repairs it: a damaged file header or damaged
    /// records cause a rewrite, an incomplete last record is truncated, and records over the
    /// limit are dropped.
    fn recover(&mut self) -> Result<(), QueueError> {
        let mut bytes = Vec::new();
        self.file
            .read_to_end(&mut bytes)
            .map_err(|error| QueueError::Read {
                path: self.path.clone(),
                error,
            })?;
        let scan = scan_queue_file(&self.path, &bytes)?;

        self.pending = scan.pending;
        self.pending_bytes = scan.pending_bytes;
        let after_max_seq = scan.max_seq.map_or(FIRST_SEQ, |seq| seq + 1);
        self.next_seq = scan.header_next_seq.unwrap_or(FIRST_SEQ).max(after_max_seq);

        // A damaged header cannot be appended after, so the rewrite must succeed. It also
        // removes any incomplete tail and damaged records.
        let mut rewritten = false;
        if scan.header_next_seq.is_none() {
            warn!(
                "event queue {}: file header is damaged; rewriting the {} recovered events \
                 with the next seq {}",
                self.path.display(),
                self.pending.len(),
                self.next_seq
            );
            self.compact()?;
            rewritten = true;
        } else {
            self.file_len = scan.valid_end as u64;
            self.dead_bytes = self.file_len - FILE_HEADER_LEN as u64 - self.pending_bytes;
            let torn_bytes = bytes.len() - scan.valid_end;
            if torn_bytes > 0 {
                warn!(
                    "event queue {}: truncating {} bytes of incomplete or damaged data at \
                     offset {} (a write interrupted by a crash or power loss)",
                    self.path.display(),
                    torn_bytes,
                    scan.valid_end
                );
                self.truncate_tail().map_err(|error| QueueError::Write {
                    path: self.path.clone(),
                    error,
                })?;
            }
        }

        self.drop_over_limit()?;

        // Rewriting now keeps the next open from reporting the same damage again.
        if scan.skipped_records > 0 && !rewritten {
            info!(
                "event queue {}: rewriting the file without {} damaged records",
                self.path.display(),
                scan.skipped_records
            );
            if let Err(error) = self.compact() {
                warn!("{error}; the damaged records stay in the file until a later compaction");
            }
        } else {
            self.compact_if_worthwhile();
        }
        Ok(())
    }

    /// Drops the oldest pending records until `pending_bytes` fits `max_bytes`, writing a
    /// drop marker for each so that they stay dropped.
    fn drop_over_limit(&mut self) -> Result<(), QueueError> {
        let drops = self.oldest_to_drop(0);
        if drops.is_empty() {
            return Ok(());
        }

        let mut bytes = Vec::with_capacity(drops.len() * RECORD_HEADER_LEN);
        for &seq in &drops {
            encode_record(&mut bytes, KIND_DROP, seq, &[]);
        }
        self.append(&bytes)?;

        for &seq in &drops {
            let dropped_bytes = self.remove_pending(seq);
            warn!(
                "event queue {}: dropped event seq {} ({} bytes) because the pending events \
                 exceed the limit of {} bytes",
                self.path.display(),
                seq,
                dropped_bytes,
                self.max_bytes
            );
        }
        self.dead_bytes += (drops.len() * RECORD_HEADER_LEN) as u64;
        self.dropped_on_open = drops.len() as u64;
        Ok(())
    }

    /// Seqs of the oldest pending records whose removal makes room for `incoming` more
    /// bytes under `max_bytes`.
    fn oldest_to_drop(&self, incoming: u64) -> Vec<u64> {
        let mut drops = Vec::new();
        let mut remaining = self.pending_bytes;
        for (&seq, payload) in &self.pending {
            if remaining + incoming <= self.max_bytes {
                break;
            }
            remaining -= record_len(payload.len());
            drops.push(seq);
        }
        drops
    }

    /// Appends the ack records that earlier failed writes left out.
    fn encode_unwritten_acks(&self, out: &mut Vec<u8>) {
        for &seq in &self.unwritten_acks {
            encode_record(out, KIND_ACK, seq, &[]);
        }
    }

    /// Records that an append with the output of `encode_unwritten_acks` succeeded.
    fn unwritten_acks_written(&mut self) {
        let written = std::mem::take(&mut self.unwritten_acks);
        self.dead_bytes += (written.len() * RECORD_HEADER_LEN) as u64;
    }

    /// Removes `seq` from the pending records and moves its bytes to `dead_bytes`.
    /// Returns its record length, or 0 if it was not pending.
    fn remove_pending(&mut self, seq: u64) -> u64 {
        let Some(payload) = self.pending.remove(&seq) else {
            return 0;
        };
        let bytes = record_len(payload.len());
        self.pending_bytes -= bytes;
        self.dead_bytes += bytes;
        bytes
    }

    /// Writes `bytes` at `file_len` and syncs them. On error `file_len` stays, and
    /// whatever part of `bytes` reached the file is cut off at once, so that the next open
    /// does not take it for a write interrupted by a crash. If that truncation fails too,
    /// the next append retries it first.
    fn append(&mut self, bytes: &[u8]) -> Result<(), QueueError> {
        match self.write_at_end(bytes) {
            Ok(()) => {
                self.file_len += bytes.len() as u64;
                Ok(())
            }
            Err(error) => {
                self.tail_dirty = true;
                // Shrinking a file frees space, so this works on a full disk.
                if let Err(truncate_error) = self.truncate_tail() {
                    debug!(
                        "cannot truncate event queue {} after a failed write: {}; the next \
                         write retries",
                        self.path.display(),
                        os_message(&truncate_error)
                    );
                }
                Err(QueueError::Write {
                    path: self.path.clone(),
                    error,
                })
            }
        }
    }

    fn write_at_end(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.tail_dirty {
            self.truncate_tail()?;
        }
        self.file.seek(SeekFrom::Start(self.file_len))?;
        self.file.write_all(bytes)?;
        self.file.sync_data()
    }

    /// Cuts the file back to `file_len`.
    fn truncate_tail(&mut self) -> io::Result<()> {
        self.file.set_len(self.file_len)?;
        self.file.sync_data()?;
        self.tail_dirty = false;
        Ok(())
    }

    /// Compacts when dead bytes pass [`COMPACT_MIN_DEAD_BYTES`] and half the file. A
    /// failure is logged, not returned: the append that came before already succeeded, and
    /// the old file stays valid.
    fn compact_if_worthwhile(&mut self) {
        if self.dead_bytes < COMPACT_MIN_DEAD_BYTES || self.dead_bytes * 2 <= self.file_len {
            return;
        }
        // NOTE: while the disk stays full, every push and ack retries and logs this once.
        if let Err(error) = self.compact() {
            warn!("{error}; the queue keeps appending to the old file and retries after the next push or ack");
        }
    }

    /// Rewrites the pending records to a new file and renames it over the queue file.
    fn compact(&mut self) -> Result<(), QueueError> {
        let before = self.file_len;
        let file = write_queue_file(
            &self.dir,
            &self.tmp_path,
            &self.path,
            self.next_seq,
            &self.pending,
        )
        .map_err(|error| QueueError::Compact {
            path: self.path.clone(),
            error,
        })?;

        self.file = file;
        self.file_len = FILE_HEADER_LEN as u64 + self.pending_bytes;
        self.dead_bytes = 0;
        self.tail_dirty = false;
        // The new file lists only `pending`, so the missing ack records no longer matter.
        self.unwritten_acks.clear();
        debug!(
            "compacted event queue {}: {} -> {} bytes, {} pending events",
            self.path.display(),
            before,
            self.file_len,
            self.pending.len()
        );
        Ok(())
    }
}

/// Bytes a record with a `payload_len`-byte payload takes in the file.
fn record_len(payload_len: usize) -> u64 {
    RECORD_HEADER_LEN as u64 + payload_len as u64
}

fn validate_name(name: &str) -> Result<(), QueueError> {
    let invalid = name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']);
    if invalid {
        return Err(QueueError::InvalidName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Attempts at a lock held under this process's own id before it counts as held (10 ms apart).
const OWN_LOCK_RETRIES: u32 = 100;

/// Opens and locks `lock_path`, then writes this process's id into it for the error message
/// of a second opener.
fn lock_queue(lock_path: &Path, queue_path: &Path) -> Result<File, QueueError> {
    let mut lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(lock_path)
        .map_err(|error| QueueError::Open {
            path: lock_path.to_path_buf(),
            error,
        })?;

    // A lock that names this process may be held only by a child another thread is
    // starting: the child shares the open lock file until its exec closes it. That clears
    // within milliseconds as a rule, so such a lock is retried for up to
    // `OWN_LOCK_RETRIES` × 10 ms before it is reported.
    let mut own_lock_retries = 0;
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                lock.seek(SeekFrom::Start(0)).ok();
                let holder_pid = lock
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                if holder_pid == Some(std::process::id()) && own_lock_retries < OWN_LOCK_RETRIES {
                    own_lock_retries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
                return Err(QueueError::Locked {
                    path: queue_path.to_path_buf(),
                    lock_path: lock_path.to_path_buf(),
                    holder_pid,
                });
            }
            Err(TryLockError::Error(error)) => {
                return Err(QueueError::Lock {
                    path: lock_path.to_path_buf(),
                    error,
                });
            }
        }
    }

    let write_pid = |lock: &mut File| -> io::Result<()> {
        lock.set_len(0)?;
        lock.seek(SeekFrom::Start(0))?;
        writeln!(lock, "{}", std::process::id())
    };
    write_pid(&mut lock).map_err(|error| QueueError::Write {
        path: lock_path.to_path_buf(),
        error,
    })?;
    Ok(lock)
}

/// Removes a temporary file left by a compaction that a crash interrupted before the
/// rename. The queue file itself is still complete then.
fn remove_unfinished_compaction(tmp_path: &Path) {
    match fs::remove_file(tmp_path) {
        Ok(()) => info!(
            "removed {}, left by a compaction that a crash interrupted",
            tmp_path.display()
        ),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => warn!(
            "cannot remove {}: {}; the next compaction overwrites it",
            tmp_path.display(),
            os_message(&error)
        ),
    }
}

/// Writes a complete queue file (header with `next_seq`, then one event record per pending
/// entry) to `tmp_path`, syncs it, renames it to `path` and syncs `dir`. Returns the new
/// file, open for reading and writing.
///
/// A crash at any step leaves either the old or the new file at `path`, both complete.
fn write_queue_file(
    dir: &Path,
    tmp_path: &Path,
    path: &Path,
    next_seq: u64,
    pending: &BTreeMap<u64, Vec<u8>>,
) -> io::Result<File> {
    let mut bytes = Vec::new();
    encode_file_header(&mut bytes, next_seq);
    for (&seq, payload) in pending {
        encode_record(&mut bytes, KIND_EVENT, seq, payload);
    }

    let written = (|| {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(tmp_path)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        fs::rename(tmp_path, path)?;
        Ok(file)
    })();
    let file = match written {
        Ok(file) => file,
        Err(error) => {
            // Best effort: a leftover file is removed on the next open anyway.
            let _ = fs::remove_file(tmp_path);
            return Err(error);
        }
    };

    // The rename is durable only once the folder entry is synced.
    File::open(dir)?.sync_all()?;
    Ok(file)
}

fn encode_file_header(out: &mut Vec<u8>, next_seq: u64) {
    let start = out.len();
    out.extend_from_slice(&FILE_MAGIC);
    out.extend_from_slice(&FILE_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&next_seq.to_le_bytes());
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Appends one record to `out`.
///
/// # Panics
/// If `payload` is longer than `u32::MAX` bytes. `open` caps `max_bytes` so that no
/// accepted payload is.
fn encode_record(out: &mut Vec<u8>, kind: u8, seq: u64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("payload length checked against max_bytes");
    let start = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let header_crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Decoded fixed part of a record.
struct RecordHeader {
    payload_len: usize,
    seq: u64,
    kind: u8,
    payload_crc: u32,
}

/// Decodes the record header at the start of `bytes`. Returns `None` if `bytes` is too
/// short or the header CRC does not match.
fn decode_record_header(bytes: &[u8]) -> Option<RecordHeader> {
    let header = bytes.get(..RECORD_HEADER_LEN)?;
    if crc32fast::hash(&header[..17]) != le_u32(&header[17..21]) {
        return None;
    }
    Some(RecordHeader {
        payload_len: le_u32(&header[0..4]) as usize,
        seq: le_u64(&header[4..12]),
        kind: header[12],
        payload_crc: le_u32(&header[13..17]),
    })
}

/// Returns the payload of the record whose header is `header`, at the start of `bytes`,
/// if it is complete and its CRC matches.
fn checked_payload<'a>(bytes: &'a [u8], header: &RecordHeader) -> Option<&'a [u8]> {
    let end = RECORD_HEADER_LEN.checked_add(header.payload_len)?;
    let payload = bytes.get(RECORD_HEADER_LEN..end)?;
    (crc32fast::hash(payload) == header.payload_crc).then_some(payload)
}

/// Offset of the first complete record with matching CRCs at or after `from`.
fn find_next_record(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len()).find(|&offset| {
        let rest = &bytes[offset..];
        decode_record_header(rest).is_some_and(|header| checked_payload(rest, &header).is_some())
    })
}

fn le_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes.try_into().expect("4 bytes"))
}

fn le_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
}

/// Result of [`scan_queue_file`].
struct Scan {
    /// `next_seq` from the file header, or `None` if the header is damaged.
    header_next_seq: Option<u64>,
    pending: BTreeMap<u64, Vec<u8>>,
    pending_bytes: u64,
    /// Highest seq in any intact record header, acks and drops included.
    max_seq: Option<u64>,
    /// End of the last complete record. Bytes after it are an incomplete tail.
    valid_end: usize,
    /// Damaged, duplicate or unknown records skipped before `valid_end`.
    skipped_records: usize,
}

/// Checks the file header and replays the records in `bytes`, the whole queue file.
///
/// A record that ends exactly at the end of the file with a bad payload CRC counts as an
/// incomplete tail, not as damage. A write cut off by a power loss looks like that on file
/// systems that extend the file before its data reaches the disk.
fn scan_queue_file(path: &Path, bytes: &[u8]) -> Result<Scan, QueueError> {
    let mut scan = Scan {
        header_next_seq: check_file_header(path, bytes)?,
        pending: BTreeMap::new(),
        pending_bytes: 0,
        max_seq: None,
        valid_end: bytes.len(),
        skipped_records: 0,
    };

    let mut offset = FILE_HEADER_LEN.min(bytes.len());
    while offset < bytes.len() {
        let rest = &bytes[offset..];

        // A header that fails its CRC gives no trustworthy length: look for the next intact
        // record. If there is none, everything from here on is an incomplete tail.
        let Some(header) = decode_record_header(rest) else {
            if rest.len() < RECORD_HEADER_LEN {
                break;
            }
            let Some(next) = find_next_record(bytes, offset + 1) else {
                break;
            };
            warn!(
                "event queue {}: skipping {} bytes with a damaged record header at offset {}",
                path.display(),
                next - offset,
                offset
            );
            scan.skipped_records += 1;
            offset = next;
            continue;
        };

        let record_end = offset as u64 + record_len(header.payload_len);
        if record_end > bytes.len() as u64 {
            break;
        }
        let record_end = record_end as usize;

        let Some(payload) = checked_payload(rest, &header) else {
            if record_end == bytes.len() {
                break;
            }
            scan.max_seq = scan.max_seq.max(Some(header.seq));
            warn!(
                "event queue {}: skipping event seq {} at offset {}: payload checksum mismatch",
                path.display(),
                header.seq,
                offset
            );
            scan.skipped_records += 1;
            offset = record_end;
            continue;
        };

        scan.max_seq = scan.max_seq.max(Some(header.seq));
        replay_record(path, &mut scan, &header, payload, offset);
        offset = record_end;
    }
    scan.valid_end = offset;
    Ok(scan)
}

/// Applies one intact record to the pending set.
fn replay_record(
    path: &Path,
    scan: &mut Scan,
    header: &RecordHeader,
    payload: &[u8],
    offset: usize,
) {
    match header.kind {
        KIND_EVENT if scan.pending.contains_key(&header.seq) => {
            warn!(
                "event queue {}: skipping a second event with seq {} at offset {}",
                path.display(),
                header.seq,
                offset
            );
            scan.skipped_records += 1;
        }
        KIND_EVENT => {
            scan.pending.insert(header.seq, payload.to_vec());
            scan.pending_bytes += record_len(payload.len());
        }
        KIND_ACK | KIND_DROP => {
            if let Some(removed) = scan.pending.remove(&header.seq) {
                scan.pending_bytes -= record_len(removed.len());
            }
        }
        unknown => {
            warn!(
                "event queue {}: skipping a record of unknown kind {} (seq {}) at offset {}",
                path.display(),
                unknown,
                header.seq,
                offset
            );
            scan.skipped_records += 1;
        }
    }
}

/// Checks the file header and returns its `next_seq`, or `None` (logged by the caller) if
/// the header is incomplete or fails its CRC.
///
/// A different magic or an intact header with another version is an error, so that a file
/// this code did not write is never rewritten.
fn check_file_header(path: &Path, bytes: &[u8]) -> Result<Option<u64>, QueueError> {
    let magic_len = bytes.len().min(FILE_MAGIC.len());
    if bytes[..magic_len] != FILE_MAGIC[..magic_len] {
        return Err(QueueError::NotAQueue {
            path: path.to_path_buf(),
            reason: format!(
                "starts with {:02x?} instead of {:02x?}",
                &bytes[..magic_len],
                FILE_MAGIC
            ),
        });
    }
    let Some(header) = bytes.get(..FILE_HEADER_LEN) else {
        return Ok(None);
    };
    if crc32fast::hash(&header[..16]) != le_u32(&header[16..20]) {
        return Ok(None);
    }

    let version = u16::from_le_bytes([header[4], header[5]]);
    if version != FILE_VERSION {
        return Err(QueueError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version,
            supported: FILE_VERSION,
        });
    }
    Ok(Some(le_u64(&header[8..16])))
}

#[cfg(test)]
mod tests {
    use super::super::test_disk::TinyDisk;
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Limit large enough that no test below drops records unless it means to.
    const ROOMY: u64 = 1 << 20;

    /// Builds a `len`-byte JSON-like payload that differs for each `tag`.
    fn payload(tag: u64, len: usize) -> Vec<u8> {
        let mut bytes = format!("{{\"event\":{tag},\"pad\":\"").into_bytes();
        bytes.resize(len.saturating_sub(2), b'x');
        bytes.extend_from_slice(b"\"}");
        bytes.truncate(len);
        bytes
    }

    /// Pending seqs in the order `next_after` returns them.
    fn pending_seqs(queue: &DiskQueue) -> Vec<u64> {
        let mut seqs = Vec::new();
        let mut last = None;
        while let Some((seq, _)) = queue.next_after(last) {
            seqs.push(seq);
            last = Some(seq);
        }
        seqs
    }

    fn pending_payloads(queue: &DiskQueue) -> Vec<Vec<u8>> {
        let mut payloads = Vec::new();
        let mut last = None;
        while let Some((seq, payload)) = queue.next_after(last) {
            payloads.push(payload.to_vec());
            last = Some(seq);
        }
        payloads
    }

    fn file_len(path: &Path) -> u64 {
        fs::metadata(path).unwrap().len()
    }

    #[test]
    fn push_next_after_and_ack_follow_seq_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();
        let first = queue.push(&payload(1, 300)).unwrap();
        let second = queue.push(&payload(2, 400)).unwrap();
        let third = queue.push(&payload(3, 500)).unwrap();

        assert_eq!(first, Pushed { seq: 1, dropped: 0 });
        assert_eq!(second.seq, 2);
        assert_eq!(third.seq, 3);
        assert_eq!(
            queue.next_after(None),
            Some((1, payload(1, 300).as_slice()))
        );
        assert_eq!(
            queue.next_after(Some(1)),
            Some((2, payload(2, 400).as_slice()))
        );
        assert_eq!(queue.next_after(Some(3)), None);
        assert_eq!(queue.len(), 3);
        assert_eq!(queue.pending_bytes(), 3 * 21 + 300 + 400 + 500);

        queue.ack(1).unwrap();

        assert_eq!(queue.next_after(None).map(|(seq, _)| seq), Some(2));
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.pending_bytes(), 2 * 21 + 400 + 500);
    }

    #[test]
    fn reopen_returns_same_pending_records_and_seqs() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();
        for tag in 1..=3 {
            queue.push(&payload(tag, 450)).unwrap();
        }
        queue.ack(2).unwrap();
        drop(queue);

        let queue = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();

        assert_eq!(pending_seqs(&queue), vec![1, 3]);
        assert_eq!(
            pending_payloads(&queue),
            vec![payload(1, 450), payload(3, 450)]
        );
        assert_eq!(queue.pending_bytes(), 2 * (21 + 450));
        assert_eq!(queue.path(), dir.path().join("cam.queue"));
    }

    #[test]
    fn out_of_order_acks_remove_only_acked_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();
        for tag in 1..=5 {
            queue.push(&payload(tag, 300)).unwrap();
        }

        queue.ack(4).unwrap();
        queue.ack(2).unwrap();

        assert_eq!(pending_seqs(&queue), vec![1, 3, 5]);
        assert_eq!(queue.next_after(Some(1)).map(|(seq, _)| seq), Some(3));
        assert_eq!(queue.next_after(Some(2)).map(|(seq, _)| seq), Some(3));

        queue.ack(5).unwrap();
        queue.ack(1).unwrap();
        drop(queue);
        let queue = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();

        assert_eq!(pending_seqs(&queue), vec![3]);
    }

    #[test]
    fn failed_push_is_truncated_at_once() {
        let Some(disk) = TinyDisk::mount() else {
            return;
        };
        let mut queue = DiskQueue::open(disk.path(), "cam", ROOMY).unwrap();
        // The file ends 100 bytes before the end of its first page, so the next record
        // fits only partly before the disk is full.
        let first = disk.page - FILE_HEADER_LEN as u64 - RECORD_HEADER_LEN as u64 - 100;
        queue.push(&payload(1, first as usize)).unwrap();
        let intact_len = file_len(queue.path());
        disk.fill();

        let error = queue.push(&payload(2, 300)).unwrap_err();

        assert!(matches!(error, QueueError::Write { .. }), "{error:?}");
        assert!(
            error.to_string().contains("no space left on device"),
            "{error}"
        );
        assert_eq!(file_len(queue.path()), intact_len);
        assert_eq!(pending_seqs(&queue), vec![1]);
        drop(queue);
        let queue = DiskQueue::open(disk.path(), "cam", ROOMY).unwrap();
        assert_eq!(pending_seqs(&queue), vec![1]);
        assert_eq!(file_len(queue.path()), intact_len);
    }

    #[test]
    fn failed_ack_written_with_next_write() {
        let Some(disk) = TinyDisk::mount() else {
            return;
        };
        let mut queue = DiskQueue::open(disk.path(), "cam", ROOMY).unwrap();
        // The file ends exactly at a page boundary, so the ack record needs a new page.
        let first = disk.page - FILE_HEADER_LEN as u64 - RECORD_HEADER_LEN as u64;
        queue.push(&payload(1, first as usize)).unwrap();
        let filler = disk.fill();

        let error = queue.ack(1).unwrap_err();

        assert!(matches!(error, QueueError::Write { .. }), "{error:?}");
        assert!(queue.is_empty());
        assert_eq!(queue.unwritten_acks(), 1);

        fs::remove_file(filler).unwrap();
        let second = queue.push(&payload(2, 300)).unwrap();

        assert_eq!(queue.unwritten_acks(), 0);
        drop(queue);
        let queue = DiskQueue::open(disk.path(), "cam", ROOMY).unwrap();
        assert_eq!(pending_seqs(&queue), vec![second.seq]);
    }

    #[test]
    fn unwritten_ack_resends_after_restart() {
        let Some(disk) = TinyDisk::mount() else {
            return;
        };
        let mut queue = DiskQueue::open(disk.path(), "cam", ROOMY).unwrap();
        let first = disk.page - FILE_HEADER_LEN as u64 - RECORD_HEADER_LEN as u64;
        queue.push(&payload(1, first as usize)).unwrap();
        disk.fill();

        assert!(queue.ack(1).is_err());
        drop(queue);
        let queue = DiskQueue::open(disk.path(), "cam", ROOMY).unwrap();

        assert_eq!(pending_seqs(&queue), vec![1]);
    }

    #[test]
    fn skipped_seq_is_not_handed_out_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();
        queue.push(&payload(1, 300)).unwrap();

        let skipped = queue.skip_seq();
        let pushed = queue.push(&payload(2, 300)).unwrap();

        assert_eq!(skipped, 2);
        assert_eq!(pushed.seq, 3);
        assert_eq!(pending_seqs(&queue), vec![1, 3]);
    }

    #[test]
    fn ack_of_unknown_seq_is_noop() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();
        queue.push(&payload(1, 300)).unwrap();
        queue.push(&payload(2, 300)).unwrap();
        queue.ack(1).unwrap();
        let size = file_len(queue.path());

        queue.ack(1).unwrap();
        queue.ack(99).unwrap();

        assert_eq!(pending_seqs(&queue), vec![2]);
        assert_eq!(file_len(queue.path()), size);
    }

    #[test]
    fn seq_continues_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();
        queue.push(&payload(1, 300)).unwrap();
        queue.push(&payload(2, 300)).unwrap();
        queue.ack(2).unwrap();
        drop(queue);

        let mut queue = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();
        let pushed = queue.push(&payload(3, 300)).unwrap();

        assert_eq!(pushed.seq, 3);
        assert_eq!(pending_seqs(&queue), vec![1, 3]);
    }

    #[test]
    fn seq_continues_after_all_acked_and_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();
        for tag in 1..=3 {
            queue.push(&payload(tag, 300)).unwrap();
        }
        for seq in 1..=3 {
            queue.ack(seq).unwrap();
        }
        queue.compact().unwrap();

        // Only the file header is left, so the next seq can come only from it.
        assert_eq!(file_len(queue.path()), FILE_HEADER_LEN as u64);
        drop(queue);

        let mut queue = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();
        assert!(queue.is_empty());
        assert_eq!(queue.push(&payload(4, 300)).unwrap().seq, 4);
    }

    #[test]
    fn torn_tail_is_truncated_and_earlier_records_survive() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();
        queue.push(&payload(1, 400)).unwrap();
        queue.push(&payload(2, 400)).unwrap();
        let path = queue.path().to_path_buf();
        let intact_len = file_len(&path);
        drop(queue);

        let mut record = Vec::new();
        encode_record(&mut record, KIND_EVENT, 3, &payload(3, 400));
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&record[..record.len() / 2]).unwrap();
        drop(file);

        let mut queue = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();

        assert_eq!(pending_seqs(&queue), vec![1, 2]);
        assert_eq!(
            pending_payloads(&queue),
            vec![payload(1, 400), payload(2, 400)]
        );
        assert_eq!(file_len(&path), intact_len);
        assert_eq!(queue.push(&payload(3, 400)).unwrap().seq, 3);
    }

    #[test]
    fn torn_record_header_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();
        queue.push(&payload(1, 400)).unwrap();
        let path = queue.path().to_path_buf();
        let intact_len = file_len(&path);
        drop(queue);

        let mut record = Vec::new();
        encode_record(&mut record, KIND_EVENT, 2, &payload(2, 400));
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&record[..10]).unwrap();
        drop(file);

        let queue = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();

        assert_eq!(pending_seqs(&queue), vec![1]);
        assert_eq!(file_len(&path), intact_len);
    }

    #[test]
    fn flipped_payload_byte_skips_only_that_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();
        for tag in 1..=3 {
            queue.push(&payload(tag, 400)).unwrap();
        }
        let path = queue.path().to_path_buf();
        drop(queue);

        let mut bytes = fs::read(&path).unwrap();
        let middle_payload = FILE_HEADER_LEN + (RECORD_HEADER_LEN + 400) + RECORD_HEADER_LEN;
        bytes[middle_payload + 100] ^= 0x01;
        fs::write(&path, &bytes).unwrap();

        let queue = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();

        assert_eq!(pending_seqs(&queue), vec![1, 3]);
        assert_eq!(
            pending_payloads(&queue),
            vec![payload(1, 400), payload(3, 400)]
        );
        // The open rewrote the file without the damaged record.
        assert_eq!(
            file_len(&path),
            (FILE_HEADER_LEN + 2 * (RECORD_HEADER_LEN + 400)) as u64
        );
    }

    #[test]
    fn flipped_record_header_byte_skips_only_that_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();
        for tag in 1..=3 {
            queue.push(&payload(tag, 400)).unwrap();
        }
        let path = queue.path().to_path_buf();
        drop(queue);

        // Byte 1 of the middle record's length: its header CRC fails, so the length cannot
        // be trusted and the scan has to find the third record by itself.
        let mut bytes = fs::read(&path).unwrap();
        let middle_record = FILE_HEADER_LEN + RECORD_HEADER_LEN + 400;
        bytes[middle_record + 1] ^= 0x40;
        fs::write(&path, &bytes).unwrap();

        let mut queue = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();

        assert_eq!(pending_seqs(&queue), vec![1, 3]);
        assert_eq!(
            pending_payloads(&queue),
            vec![payload(1, 400), payload(3, 400)]
        );
        assert_eq!(queue.push(&payload(4, 400)).unwrap().seq, 4);
    }

    #[test]
    fn limit_drops_oldest_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let record = record_len(100);
        let mut queue = DiskQueue::open(dir.path(), "cam", 3 * record).unwrap();
        for tag in 1..=3 {
            assert_eq!(queue.push(&payload(tag, 100)).unwrap().dropped, 0);
        }

        let fourth = queue.push(&payload(4, 100)).unwrap();

        assert_eq!(fourth, Pushed { seq: 4, dropped: 1 });
        assert_eq!(pending_seqs(&queue), vec![2, 3, 4]);
        assert_eq!(queue.pending_bytes(), 3 * record);

        // A record twice the size needs two old ones to go.
        let big = queue
            .push(&payload(5, 2 * 100 + RECORD_HEADER_LEN))
            .unwrap();

        assert_eq!(big, Pushed { seq: 5, dropped: 2 });
        assert_eq!(pending_seqs(&queue), vec![4, 5]);
        assert_eq!(queue.pending_bytes(), 3 * record);

        // Drops are durable: the dropped records do not come back.
        drop(queue);
        let queue = DiskQueue::open(dir.path(), "cam", 3 * record).unwrap();

        assert_eq!(pending_seqs(&queue), vec![4, 5]);
        assert_eq!(queue.dropped_on_open(), 0);
    }

    #[test]
    fn smaller_limit_on_reopen_drops_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let record = record_len(100);
        let mut queue = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();
        for tag in 1..=4 {
            queue.push(&payload(tag, 100)).unwrap();
        }
        drop(queue);

        let queue = DiskQueue::open(dir.path(), "cam", 2 * record).unwrap();

        assert_eq!(queue.dropped_on_open(), 2);
        assert_eq!(pending_seqs(&queue), vec![3, 4]);
        drop(queue);
        let queue = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();

        assert_eq!(pending_seqs(&queue), vec![3, 4]);
    }

    #[test]
    fn oversized_payload_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = DiskQueue::open(dir.path(), "cam", 1000).unwrap();
        queue.push(&payload(1, 100)).unwrap();

        let error = queue.push(&payload(2, 1500)).unwrap_err();
        let message = error.to_string();

        assert!(matches!(error, QueueError::TooLarge { .. }), "{error:?}");
        assert!(message.contains("payload of 1500 bytes"), "{message}");
        assert!(message.contains("limit of 1000 bytes"), "{message}");
        assert_eq!(pending_seqs(&queue), vec![1]);
    }

    #[test]
    fn compaction_keeps_pending_records_and_shrinks_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();
        for tag in 1..=300 {
            queue.push(&payload(tag, 500)).unwrap();
        }
        let path = queue.path().to_path_buf();
        let full_len = file_len(&path);

        for seq in 1..=290 {
            queue.ack(seq).unwrap();
        }
        let compacted_len = file_len(&path);

        // Without compaction the file would have grown by 290 ack records instead.
        assert!(
            compacted_len < full_len / 2,
            "{compacted_len} of {full_len} bytes"
        );
        let expected: Vec<u64> = (291..=300).collect();
        assert_eq!(pending_seqs(&queue), expected);

        drop(queue);
        let mut queue = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();

        assert_eq!(pending_seqs(&queue), expected);
        assert_eq!(pending_payloads(&queue)[0], payload(291, 500));
        assert_eq!(queue.push(&payload(301, 500)).unwrap().seq, 301);
    }

    #[test]
    fn second_open_fails_while_first_lives() {
        let dir = tempfile::tempdir().unwrap();
        let first = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();

        let error = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap_err();
        let message = error.to_string();

        assert!(matches!(error, QueueError::Locked { .. }), "{error:?}");
        assert!(message.contains("another gradgate process"), "{message}");
        assert!(
            message.contains(&format!("(pid {})", std::process::id())),
            "{message}"
        );
        assert!(
            message.contains(&first.path().display().to_string()),
            "{message}"
        );

        // Another name in the same folder is another queue.
        assert!(DiskQueue::open(dir.path(), "cam-2", ROOMY).is_ok());

        drop(first);
        assert!(DiskQueue::open(dir.path(), "cam", ROOMY).is_ok());
    }

    #[test]
    fn unwritable_folder_gives_documented_message() {
        let dir = tempfile::tempdir().unwrap();
        let locked = dir.path().join("read-only");
        fs::create_dir(&locked).unwrap();
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o500)).unwrap();

        // Root bypasses folder permissions (CAP_DAC_OVERRIDE), so there is nothing to test.
        if File::create(locked.join("probe")).is_ok() {
            eprintln!("skipped: folder permissions are not enforced for this user (root?)");
            return;
        }
        let queue_dir = locked.join("queue");
        let error = DiskQueue::open(&queue_dir, "cam", ROOMY).unwrap_err();
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o700)).unwrap();

        assert_eq!(
            error.to_string(),
            format!(
                "cannot create event queue folder {}: permission denied (os error 13); \
                 set mqtt.queue_dir to a writable folder",
                queue_dir.display()
            )
        );
    }

    #[test]
    fn folder_below_a_file_gives_create_folder_message() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-folder");
        fs::write(&file, b"").unwrap();
        let queue_dir = file.join("queue");

        let error = DiskQueue::open(&queue_dir, "cam", ROOMY).unwrap_err();

        assert_eq!(
            error.to_string(),
            format!(
                "cannot create event queue folder {}: not a directory (os error 20); \
                 set mqtt.queue_dir to a writable folder",
                queue_dir.display()
            )
        );
    }

    #[test]
    fn invalid_name_or_limit_is_rejected() {
        let dir = tempfile::tempdir().unwrap();

        for name in ["", ".", "..", "a/b"] {
            let error = DiskQueue::open(dir.path(), name, ROOMY).unwrap_err();
            assert!(
                matches!(error, QueueError::InvalidName { .. }),
                "{name:?}: {error:?}"
            );
        }
        let error = DiskQueue::open(dir.path(), "cam", 21).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid event queue limit of 21 bytes: set it between 22 and 4294967295 bytes"
        );
    }

    #[test]
    fn foreign_file_is_rejected_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cam.queue");
        fs::write(&path, b"{\"not\":\"a queue\"}").unwrap();

        let error = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap_err();

        assert!(matches!(error, QueueError::NotAQueue { .. }), "{error:?}");
        assert_eq!(fs::read(&path).unwrap(), b"{\"not\":\"a queue\"}");
    }

    #[test]
    fn damaged_file_header_is_rewritten_and_records_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();
        queue.push(&payload(1, 300)).unwrap();
        queue.push(&payload(2, 300)).unwrap();
        let path = queue.path().to_path_buf();
        drop(queue);

        // A byte of next_seq: the header CRC no longer matches.
        let mut bytes = fs::read(&path).unwrap();
        bytes[9] ^= 0x10;
        fs::write(&path, &bytes).unwrap();

        let mut queue = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();

        assert_eq!(pending_seqs(&queue), vec![1, 2]);
        assert_eq!(queue.push(&payload(3, 300)).unwrap().seq, 3);
    }

    #[test]
    fn empty_queue_file_is_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cam.queue");
        fs::write(&path, b"").unwrap();

        let mut queue = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();

        assert!(queue.is_empty());
        assert_eq!(file_len(&path), FILE_HEADER_LEN as u64);
        assert_eq!(queue.push(&payload(1, 300)).unwrap().seq, FIRST_SEQ);
    }

    #[test]
    fn leftover_compaction_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();
        queue.push(&payload(1, 300)).unwrap();
        drop(queue);
        let tmp_path = dir.path().join("cam.queue.tmp");
        fs::write(&tmp_path, b"half a compaction").unwrap();

        let queue = DiskQueue::open(dir.path(), "cam", ROOMY).unwrap();

        assert!(!tmp_path.exists());
        assert_eq!(pending_seqs(&queue), vec![1]);
    }
}
