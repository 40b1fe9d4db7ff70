//! How the end-to-end tests share two cores. Most of a test's time is spent waiting (on caps,
//! outages, timeouts), so up to [`UNITS`] of them run at once; a CPU-bound test takes two units,
//! a test that measures a rate or a ratio all but one, so that one light test at most runs
//! beside it, and a test that compares a clone under its own load with the same clone without
//! it takes them all. A gate admits tests in the runner's order (alone, then measuring, then the
//! longest), letting a later one pass only while an earlier one does not fit. A test may have a
//! preparation (a release build at the lowest CPU priority while tests measure, say): it starts
//! once the tests that run alone are done, ahead of every other test, and holds no units. Every
//! test is ignored unless selected and fails at once, naming Docker, when no engine answers.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};

/// What one test asks of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// Mostly waiting: capped transfers, outages, timeouts, refused logins.
    Light,
    /// CPU-bound stretches: uncapped clones, a release build.
    Heavy,
    /// Measures a rate, a ratio or what a log shows under a deadline: one light test beside it
    /// at most.
    Measuring,
    /// Compares a clone under load it makes itself with the same clone without that load, within
    /// a few percent: nothing beside it.
    Alone,
}

impl Load {
    fn units(self) -> u32 {
        match self {
            Load::Light => 1,
            Load::Heavy => 2,
            Load::Measuring => UNITS - 1,
            Load::Alone => UNITS,
        }
    }

    /// Its class in the runner's order: alone, then measuring, then the rest.
    fn class(self) -> u8 {
        match self {
            Load::Alone => 0,
            Load::Measuring => 1,
            Load::Light | Load::Heavy => 2,
        }
    }

    /// Whether the test measures: a preparation waits for such tests to end before it speeds up.
    fn measures(self) -> bool {
        self.class() < 2
    }
}

/// The gate's size, and the runner's threads (unless `--test-threads` says otherwise).
pub const UNITS: u32 = 8;
/// The first tests' threads start together; the gate waits this long for them, so that they
/// are admitted in the runner's order rather than in the order they happened to arrive.
const SETTLE: Duration = Duration::from_millis(300);

/// Tests admitted by their place in the runner's order.
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

/// A place in the gate's order: the rank, 0 for a preparation or 1 for a test, and the test's
/// place in the runner's order.
type Slot = (usize, u8, usize);

/// A test's slot.
fn test_slot(place: usize) -> Slot {
    (place, 1, place)
}

/// The slot of the preparation of the test at `place`: after the tests that run alone, ahead of
/// every other test.
fn preparation_slot(alone: usize, place: usize) -> Slot {
    (alone, 0, place)
}

struct GateState {
    free: u32,
    /// Waiting tests by slot, with the units each asks for.
    waiting: BTreeMap<Slot, u32>,
    /// Tests that measure (or run alone), waiting or running.
    measuring: u32,
    opens: Option<Instant>,
}

static GATE: Gate = Gate {
    state: Mutex::new(GateState {
        free: UNITS,
        waiting: BTreeMap::new(),
        measuring: 0,
        opens: None,
    }),
    changed: Condvar::new(),
};

/// A test's units, given back when it ends.
struct Turn {
    units: u32,
    measures: bool,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut state = GATE.state.lock().unwrap_or_else(|e| e.into_inner());
        state.free += self.units;
        state.measuring -= u32::from(self.measures);
        GATE.changed.notify_all();
    }
}

/// Blocks until `slot` is admitted with `units`; `measures` counts it among the tests that
/// measure until its turn ends.
fn enter(place: Slot, units: u32, measures: bool) -> Turn {
    let mut state = GATE.state.lock().unwrap_or_else(|e| e.into_inner());
    let opens = *state.opens.get_or_insert_with(|| Instant::now() + SETTLE);
    state.waiting.insert(place, units);
    state.measuring += u32::from(measures);
    loop {
        let now = Instant::now();
        if now >= opens && admits(&state.waiting, state.free, place) {
            state.waiting.remove(&place);
            state.free -= units;
            GATE.changed.notify_all();
            return Turn { units, measures };
        }
        let wait = opens
            .saturating_duration_since(now)
            .max(Duration::from_millis(50));
        state = GATE
            .changed
            .wait_timeout(state, wait)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// Whether a test that measures (or runs alone) is waiting or running.
pub fn measuring() -> bool {
    let state = GATE.state.lock().unwrap_or_else(|e| e.into_inner());
    state.measuring > 0
}

/// Whether `place` goes in now, with `free` units and `waiting` slots (with the units each asks
/// for): in order, a later slot passing only those that do not fit now.
fn admits(waiting: &BTreeMap<Slot, u32>, free: u32, place: Slot) -> bool {
    let mut free = free;
    for (&waiting, &asks) in waiting {
        if asks <= free {
            if waiting == place {
                return true;
            }
            free -= asks;
        }
    }
    false
}

/// An end-to-end test with its load, and the seconds it took in a run of the whole tier.
pub struct Test {
    name: &'static str,
    load: Load,
    secs: u32,
    run: Box<dyn FnOnce() -> anyhow::Result<()> + Send>,
    prepare: Option<Box<dyn FnOnce() -> anyhow::Result<()> + Send>>,
}

/// An async step on a runtime of its own.
fn on_runtime<F, Fut>(step: F) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(step())
}

impl Test {
    /// An async test, on a runtime of its own.
    pub fn new<F, Fut>(name: &'static str, load: Load, secs: u32, test: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        Test::blocking(name, load, secs, move || on_runtime(test))
    }

    /// Runs `preparation` first, once the tests that run alone are done, ahead of the others and
    /// holding no units (for work at the lowest CPU priority); the test itself then waits for its
    /// own turn.
    pub fn prepared_by<F, Fut>(mut self, preparation: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        self.prepare = Some(Box::new(move || on_runtime(preparation)));
        self
    }

    /// A test that builds its own runtime (to own its threads' logging, say).
    pub fn blocking<F>(name: &'static str, load: Load, secs: u32, test: F) -> Self
    where
        F: FnOnce() -> anyhow::Result<()> + Send + 'static,
    {
        Test {
            name,
            load,
            secs,
            run: Box::new(test),
            prepare: None,
        }
    }
}

/// The runner's order: tests that run alone first, then the measuring ones (beside the longest
/// light one), then the longest.
/// Each is ignored unless selected; when selected, it needs Docker, then its turn at the gate.
pub fn trials(mut tests: Vec<Test>) -> Vec<Trial> {
    tests.sort_by_key(|t| (t.load.class(), std::cmp::Reverse(t.secs)));
    let alone = tests.iter().filter(|t| t.load == Load::Alone).count();
    tests
        .into_iter()
        .enumerate()
        .map(|(place, test)| {
            let Test {
                name,
                load,
                run,
                prepare,
                ..
            } = test;
            Trial::test(name, move || {
                let docker = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    .and_then(|runtime| runtime.block_on(harness::require_docker()));
                if let Err(e) = docker {
                    return outcome(name, Err(e));
                }
                if let Some(prepare) = prepare {
                    // Its turn comes on an empty machine; the units go back at once.
                    drop(enter(preparation_slot(alone, place), UNITS, false));
                    let started = Instant::now();
                    let prepared = prepare();
                    eprintln!(
                        "e2e: {name} prepared in {:.1} s",
                        started.elapsed().as_secs_f64()
                    );
                    if let Err(e) = prepared {
                        return outcome(name, Err(e.context("preparing")));
                    }
                }
                let _turn = enter(test_slot(place), load.units(), load.measures());
                let started = Instant::now();
                let result = run();
                eprintln!(
                    "e2e: {name} ({load:?}) took {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                outcome(name, result)
            })
            .with_ignored_flag(true)
        })
        .collect()
}

fn outcome(name: &str, result: anyhow::Result<()>) -> Result<(), Failed> {
    result.map_err(|e| Failed::from(format!("{name}: {e:?}")))
}

/// The runner's own checks: plain trials, run by `cargo test` without Docker.
pub fn checks() -> Vec<Trial> {
    vec![
        Trial::test("runner::the_gate_admits_in_order", || {
            gate_admits_in_order();
            Ok(())
        }),
        Trial::test("runner::the_order_is_alone_measuring_then_longest", || {
            order_is_alone_measuring_then_longest();
            Ok(())
        }),
    ]
}

fn gate_admits_in_order() {
    let waiting = |slots: &[(Slot, Load)]| -> BTreeMap<Slot, u32> {
        slots.iter().map(|&(s, load)| (s, load.units())).collect()
    };
    let t = test_slot;
    // A test that runs alone goes in on an idle machine, and nothing passes it there.
    let first = waiting(&[(t(0), Load::Alone), (t(1), Load::Light)]);
    assert!(admits(&first, UNITS, t(0)));
    assert!(!admits(&first, UNITS, t(1)));
    // A measuring test leaves room for one light test, not for a heavy one.
    let beside = waiting(&[
        (t(1), Load::Measuring),
        (t(2), Load::Heavy),
        (t(3), Load::Light),
    ]);
    assert!(admits(&beside, UNITS, t(1)));
    assert!(!admits(&beside, UNITS, t(2)));
    assert!(admits(&beside, UNITS, t(3)));
    assert!(
        !admits(&beside, UNITS - 1, t(3)),
        "the measuring test's unit is spoken for"
    );
    // A later test passes an earlier one only while that one does not fit.
    let blocked = waiting(&[(t(0), Load::Alone), (t(5), Load::Light)]);
    assert!(!admits(&blocked, 3, t(0)));
    assert!(admits(&blocked, 3, t(5)));
    assert!(!admits(&waiting(&[(t(4), Load::Heavy)]), 1, t(4)));
    assert!(
        !admits(&waiting(&[(t(4), Load::Heavy)]), 2, t(5)),
        "not waiting"
    );
    // A preparation's turn comes after the tests that run alone and ahead of every other test,
    // on an empty machine.
    let prepared = waiting(&[
        (t(1), Load::Measuring),
        (preparation_slot(1, 6), Load::Alone),
        (t(4), Load::Light),
    ]);
    assert!(
        !admits(&prepared, 0, preparation_slot(1, 6)),
        "one runs alone"
    );
    assert!(!admits(&prepared, UNITS, t(1)));
    assert!(admits(&prepared, UNITS, preparation_slot(1, 6)));
}

fn order_is_alone_measuring_then_longest() {
    let test = |name: &'static str, load, secs| Test::blocking(name, load, secs, || Ok(()));
    let trials = trials(vec![
        test("short", Load::Light, 5),
        test("heavy", Load::Heavy, 50),
        test("measuring", Load::Measuring, 10),
        test("alone", Load::Alone, 1),
        test("long", Load::Light, 100),
    ]);
    let names: Vec<&str> = trials.iter().map(|t| t.name()).collect();
    assert_eq!(names, ["alone", "measuring", "long", "heavy", "short"]);
}
