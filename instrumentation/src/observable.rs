//! What an observable OpenTelemetry instrument is ([`Spec`]) and how one is built for a value
//! type ([`Observed`]): a leaf, so that the instrument registry and the route metrics both
//! build theirs the same way.

use opentelemetry::metrics::{AsyncInstrument, Meter};

/// Whether an observable instrument is a gauge or a (monotonic) counter.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Gauge,
    Counter,
}

/// An observable instrument: its kind, name, description and unit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spec {
    pub(crate) kind: Kind,
    pub(crate) name: &'static str,
    pub(crate) description: &'static str,
    pub(crate) unit: &'static str,
}

impl Spec {
    pub(crate) const fn gauge(
        name: &'static str,
        description: &'static str,
        unit: &'static str,
    ) -> Spec {
        Spec {
            kind: Kind::Gauge,
            name,
            description,
            unit,
        }
    }

    pub(crate) const fn counter(
        name: &'static str,
        description: &'static str,
        unit: &'static str,
    ) -> Spec {
        Spec {
            kind: Kind::Counter,
            name,
            description,
            unit,
        }
    }
}

/// A value type of observable instruments (`u64`, `f64`).
pub(crate) trait Observed: Sized + 'static {
    /// Registers `spec` on `meter`, reporting through `callback` at each collection.
    fn register(
        meter: &Meter,
        spec: Spec,
        callback: impl Fn(&dyn AsyncInstrument<Self>) + Send + Sync + 'static,
    );
}

macro_rules! observed {
    ($t:ty, $gauge:ident, $counter:ident) => {
        impl Observed for $t {
            fn register(
                meter: &Meter,
                spec: Spec,
                callback: impl Fn(&dyn AsyncInstrument<$t>) + Send + Sync + 'static,
            ) {
                match spec.kind {
                    Kind::Gauge => {
                        let _ = meter
                            .$gauge(spec.name)
                            .with_description(spec.description)
                            .with_unit(spec.unit)
                            .with_callback(callback)
                            .build();
                    }
                    Kind::Counter => {
                        let _ = meter
                            .$counter(spec.name)
                            .with_description(spec.description)
                            .with_unit(spec.unit)
                            .with_callback(callback)
                            .build();
                    }
                }
            }
        }
    };
}
observed!(u64, u64_observable_gauge, u64_observable_counter);
observed!(f64, f64_observable_gauge, f64_observable_counter);
