//! Signals: how the gate's decisions leave the process.
//!
//! Stage six of the data path (frame → tensor → activations → score → gate → **signal**).
//! The debounced gate ([`crate::gate::DebouncedGate`]) turns per-frame verdicts into
//! in/out transitions; this module carries them to the outside world:
//!
//! - [`gpio`]: one output line, active while out-of-distribution (level mode) or pulsed once
//!   per event (pulse mode), through rppal on a Raspberry Pi or the GPIO character device
//!   elsewhere. Pins sit behind `embedded_hal::digital::OutputPin`, so the logic is tested
//!   with a recording fake.
//! - [`mqtt`]: availability, state, events, optional per-frame messages and periodic stats
//!   over MQTT (rumqttc), with events written to a bounded on-disk queue first so that none
//!   is lost while the broker is unreachable.
//! - [`event`]: the JSON payload of one event transition.
//! - [`stats`]: counters the frame loop updates and the stats topic reports.
//!
//! # Important notes
//! - Nothing here blocks the frame loop on the network or on a pin: both signals run on their
//!   own threads behind bounded channels.
//! - Raising a GPIO line or receiving a PUBACK does not prove that the relay closed or that
//!   a subscriber acted on the event.

pub mod event;
pub mod gpio;
pub mod mqtt;
pub mod stats;
