//! The device's hybrid logical clock.
//!
//! Timestamps are `uhlc` timestamps (64-bit NTP time whose low 4 bits are a
//! logical counter, plus an id), so they order the same way on every device.
//! The id is the writer's *origin*: the incarnation of the device that
//! issued it (a new one each time the engine opens, see `docs/architecture.md`),
//! so two writes never share a timestamp even when a device's database was
//! rolled back and its clock with it. The clock itself is kept here rather than in `uhlc::HLC`, for two
//! reasons the engine cannot do without: `uhlc::HLC` reads time from a bare
//! `fn() -> NTP64`, while the sans-IO engine takes time from an injected
//! [`TimeSource`] per device (the simulation runs many devices, each with its
//! own time); and it cannot be resumed from a persisted value when the wall
//! clock is now behind that value by more than the drift bound, which is the
//! very case persistence exists for.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use uhlc::{ID, NTP64, Timestamp};
use uuid::Uuid;

/// The logical-counter bits of an NTP64 time, as `uhlc` uses them.
const COUNTER_MASK: u64 = 0xF;

/// Where a device reads physical time from.
pub trait TimeSource: Send + Sync + std::fmt::Debug {
    /// The current physical time.
    fn now(&self) -> NTP64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemTime;

impl TimeSource for SystemTime {
    fn now(&self) -> NTP64 {
        uhlc::system_time_clock()
    }
}

/// A clock that moves only when told to: for tests and simulations.
#[derive(Debug, Default, Clone)]
pub struct ManualTime(Arc<AtomicU64>);

impl ManualTime {
    /// A manual clock reading `start`.
    pub fn new(start: Duration) -> Self {
        Self(Arc::new(AtomicU64::new(NTP64::from(start).0)))
    }

    /// Sets the time, forwards or backwards.
    pub fn set(&self, to: Duration) {
        self.0.store(NTP64::from(to).0, Ordering::SeqCst);
    }

    /// Moves the time forwards.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(NTP64::from(by).0, Ordering::SeqCst);
    }
}

impl TimeSource for ManualTime {
    fn now(&self) -> NTP64 {
        NTP64(self.0.load(Ordering::SeqCst))
    }
}

/// A clock error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    /// A remote timestamp is further ahead of this device's physical time
    /// than the drift bound allows.
    #[error(
        "timestamp from {origin} is {ahead_ms} ms ahead of this device's clock, beyond the {bound_ms} ms drift bound"
    )]
    TooFarAhead {
        /// The origin that stamped it.
        origin: Uuid,
        /// How far ahead it is.
        ahead_ms: u128,
        /// The configured bound.
        bound_ms: u128,
    },
    /// An id cannot name a clock (the nil uuid).
    #[error("{0} cannot be used as a clock id")]
    InvalidDeviceId(Uuid),
}

/// A hybrid logical clock: never goes backwards, whatever the physical clock
/// does, and stays ahead of every timestamp it has observed.
#[derive(Debug, Clone)]
pub struct Hlc {
    id: ID,
    origin: Uuid,
    last: NTP64,
    max_drift: NTP64,
}

/// The clock id of an origin.
pub fn clock_id(origin: Uuid) -> Result<ID, ClockError> {
    ID::try_from(origin.as_bytes()).map_err(|_| ClockError::InvalidDeviceId(origin))
}

/// The origin (device incarnation) that issued a timestamp.
pub fn timestamp_origin(ts: &Timestamp) -> Uuid {
    let bytes = ts.get_id().to_le_bytes();
    Uuid::from_bytes(bytes)
}

impl Hlc {
    /// A clock for `origin` that resumes after `last` (the persisted value).
    pub fn new(origin: Uuid, last: NTP64, max_drift: Duration) -> Result<Self, ClockError> {
        Ok(Self {
            id: clock_id(origin)?,
            origin,
            last,
            max_drift: NTP64::from(max_drift),
        })
    }

    /// The latest time this clock has issued or observed.
    pub fn last(&self) -> NTP64 {
        self.last
    }

    /// A new timestamp, greater than every one issued or observed before.
    pub fn tick(&mut self, physical: NTP64) -> Timestamp {
        let now = physical.0 & !COUNTER_MASK;
        self.last = if now > (self.last.0 & !COUNTER_MASK) {
            NTP64(now)
        } else {
            NTP64(self.last.0.saturating_add(1))
        };
        Timestamp::new(self.last, self.id)
    }

    /// Takes a remote timestamp into account, or refuses it when it is
    /// further ahead of `physical` than the drift bound. A refused timestamp
    /// leaves the clock unchanged.
    pub fn observe(&mut self, ts: &Timestamp, physical: NTP64) -> Result<(), ClockError> {
        let now = NTP64(physical.0 & !COUNTER_MASK);
        let remote = *ts.get_time();
        if remote > now && remote - now > self.max_drift {
            return Err(ClockError::TooFarAhead {
                origin: timestamp_origin(ts),
                ahead_ms: (remote - now).to_duration().as_millis(),
                bound_ms: self.max_drift.to_duration().as_millis(),
            });
        }
        if remote > self.last {
            self.last = remote;
        }
        Ok(())
    }

    /// The origin whose id this clock stamps.
    pub fn origin(&self) -> Uuid {
        self.origin
    }

    /// Would a remote timestamp be refused, without observing it?
    pub fn check(&self, ts: &Timestamp, physical: NTP64) -> Result<(), ClockError> {
        let now = NTP64(physical.0 & !COUNTER_MASK);
        let remote = *ts.get_time();
        if remote > now && remote - now > self.max_drift {
            return Err(ClockError::TooFarAhead {
                origin: timestamp_origin(ts),
                ahead_ms: (remote - now).to_duration().as_millis(),
                bound_ms: self.max_drift.to_duration().as_millis(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn device(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn the_clock_never_goes_backwards_when_time_does() {
        let mut hlc = Hlc::new(device(1), NTP64(0), Duration::from_secs(1)).unwrap();
        let t1 = hlc.tick(NTP64::from(Duration::from_secs(100)));
        let t2 = hlc.tick(NTP64::from(Duration::from_secs(50)));
        let t3 = hlc.tick(NTP64::from(Duration::from_secs(50)));
        assert!(t1 < t2 && t2 < t3);
    }

    #[test]
    fn a_resumed_clock_stays_ahead_of_its_persisted_value() {
        let persisted = NTP64::from(Duration::from_secs(10_000));
        // The wall clock is now far behind (stepped back by an hour).
        let mut hlc = Hlc::new(device(1), persisted, Duration::from_millis(500)).unwrap();
        let t = hlc.tick(NTP64::from(Duration::from_secs(10_000 - 3_600)));
        assert!(*t.get_time() > persisted);
    }

    #[test]
    fn a_timestamp_beyond_the_drift_bound_is_refused_and_changes_nothing() {
        let mut hlc = Hlc::new(device(1), NTP64(0), Duration::from_secs(1)).unwrap();
        let now = NTP64::from(Duration::from_secs(100));
        let ahead = Timestamp::new(
            NTP64::from(Duration::from_secs(102)),
            clock_id(device(2)).unwrap(),
        );
        let before = hlc.last();
        let err = hlc.observe(&ahead, now).unwrap_err();
        assert!(matches!(err, ClockError::TooFarAhead { origin, .. } if origin == device(2)));
        assert_eq!(hlc.last(), before);
        let near = Timestamp::new(
            NTP64::from(Duration::from_millis(100_900)),
            clock_id(device(2)).unwrap(),
        );
        hlc.observe(&near, now).unwrap();
        assert!(hlc.tick(now) > near);
    }

    #[test]
    fn the_nil_device_cannot_own_a_clock() {
        assert!(Hlc::new(Uuid::nil(), NTP64(0), Duration::from_secs(1)).is_err());
    }

    #[test]
    fn a_timestamp_names_its_origin() {
        let mut hlc = Hlc::new(device(77), NTP64(0), Duration::from_secs(1)).unwrap();
        let t = hlc.tick(NTP64(1 << 40));
        assert_eq!(timestamp_origin(&t), device(77));
    }

    proptest! {
        /// Whatever the physical readings and remote timestamps, every tick is
        /// greater than every earlier tick and every accepted remote stamp.
        #[test]
        fn ticks_are_strictly_monotonic(events in prop::collection::vec((any::<bool>(), 0u64..1u64 << 40, 0u64..1u64 << 40), 1..200)) {
            let mut hlc = Hlc::new(device(1), NTP64(0), Duration::from_secs(3600)).unwrap();
            let other = clock_id(device(2)).unwrap();
            let mut high = Timestamp::new(NTP64(0), other);
            for (remote, physical, stamp) in events {
                if remote {
                    let ts = Timestamp::new(NTP64(stamp), other);
                    if hlc.observe(&ts, NTP64(physical)).is_ok() && ts > high {
                        high = ts;
                    }
                } else {
                    let t = hlc.tick(NTP64(physical));
                    prop_assert!(t > high);
                    high = t;
                }
            }
        }
    }
}
