//! Timers: messages a component schedules to itself, driven through `timekeeper` and
//! `ticker` from guest-examples. Every test asserts what happened, never how fast.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use courier_host_broker::{Broker, BrokerConfig, BrokerError, ComponentState, TIMER_SENDER_PREFIX};
use courier_host_store::{RedbStore, Store, Timer as StoredTimer};
use courier_test_support::guest_bytes;

use crate::common::{SECOND, Setup, crashed_host, durable_setup, engine, load};

/// One timer message as `timekeeper` recorded it.
#[derive(Debug)]
struct Fired {
    name: String,
    payload: String,
    missed: u64,
    /// From the timer's scheduling to its message, on the guest's monotonic clock.
    elapsed: Duration,
}

impl Setup {
    async fn command(&self, id: &str, command: &str) -> String {
        self.probe(id, command).await
    }

    async fn fired(&self, id: &str) -> Vec<Fired> {
        self.command(id, "fired")
            .await
            .lines()
            .map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                Fired {
                    name: fields[0].to_string(),
                    payload: fields[1].to_string(),
                    missed: fields[2].parse().unwrap(),
                    elapsed: Duration::from_nanos(fields[3].parse().unwrap()),
                }
            })
            .collect()
    }

    /// Ask `id` for its record until `done` accepts it.
    async fn fired_until(&self, id: &str, done: impl Fn(&[Fired]) -> bool) -> Vec<Fired> {
        let deadline = std::time::Instant::now() + 10 * SECOND;
        loop {
            let fired = self.fired(id).await;
            if done(&fired) {
                return fired;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{id}'s timer messages after ten seconds: {fired:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Ask `id` for its record until it holds at least `count` timer messages.
    async fn fired_at_least(&self, id: &str, count: usize) -> Vec<Fired> {
        let deadline = std::time::Instant::now() + 10 * SECOND;
        loop {
            let fired = self.fired(id).await;
            if fired.len() >= count {
                return fired;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{id} had {} timer messages after ten seconds, not {count}: {fired:?}",
                fired.len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn timekeeper(setup: &Setup, id: &str) {
    setup.spawn(setup.spec(id, "timekeeper")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_never_fires_before_its_time() {
    let setup = Setup::new();
    timekeeper(&setup, "tk").await;
    for (name, millis) in [("zero", 0), ("one", 1), ("short", 15), ("long", 60)] {
        let scheduled = setup
            .command("tk", &format!("after:{name}:{millis}:x"))
            .await;
        assert_eq!(scheduled, "ok");
    }
    assert_eq!(setup.command("tk", "every:tick:10:y").await, "ok");
    let fired = setup
        .fired_until("tk", |fired| {
            let seen = |name: &str| fired.iter().filter(|r| r.name == name).count();
            ["zero", "one", "short", "long"]
                .iter()
                .all(|name| seen(name) == 1)
                && seen("tick") >= 3
        })
        .await;
    assert_eq!(setup.command("tk", "cancel:tick").await, "true");
    for record in &fired {
        let asked = match record.name.as_str() {
            "zero" => 0,
            "one" => 1,
            "short" => 15,
            "long" => 60,
            // Periodic: the first tick one period after scheduling, each later one after it.
            _ => 10,
        };
        assert!(
            record.elapsed >= Duration::from_millis(asked),
            "{} fired {:?} after it was scheduled, before its {asked} ms",
            record.name,
            record.elapsed
        );
    }
    let ticks: Vec<&Fired> = fired.iter().filter(|r| r.name == "tick").collect();
    // `elapsed` of a tick counts from the scheduling: the n-th (with what it stands for)
    // is at least n periods after it.
    let mut due = 0;
    for tick in ticks {
        due += 1 + tick.missed;
        assert!(
            tick.elapsed >= Duration::from_millis(10 * due),
            "tick {due} came {:?} after scheduling",
            tick.elapsed
        );
    }
    // One-shot timers are done once fired; nothing is pending.
    assert_eq!(setup.broker.metrics("tk").unwrap().timers.pending, 0);

    // A wall-clock time: the host's clock has passed it when the message arrives.
    let at = SystemTime::now() + Duration::from_millis(30);
    let at_millis = at.duration_since(UNIX_EPOCH).unwrap().as_millis();
    let scheduled = setup.command("tk", &format!("at:wall:{at_millis}:w")).await;
    assert_eq!(scheduled, "ok");
    let fired = setup
        .fired_until("tk", |fired| fired.iter().any(|r| r.name == "wall"))
        .await;
    assert!(fired.iter().any(|r| r.name == "wall" && r.payload == "w"));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    assert!(now.as_millis() >= at_millis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_missed_while_busy_arrive_as_one_message_that_counts_them() {
    let setup = Setup::new();
    timekeeper(&setup, "tk").await;
    assert_eq!(setup.command("tk", "every:tick:10:p").await, "ok");
    // About twenty ticks come due while the handler runs.
    setup.broker.send("tk", b"busy:200".to_vec()).unwrap();
    let deadline = std::time::Instant::now() + 10 * SECOND;
    let fired = loop {
        let fired = setup.fired("tk").await;
        if fired.iter().any(|r| r.missed > 0) {
            break fired;
        }
        assert!(std::time::Instant::now() < deadline, "{fired:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(setup.command("tk", "cancel:tick").await, "true");
    let folded = fired.iter().find(|r| r.missed > 0).unwrap();
    assert!(
        folded.missed >= 10,
        "one message stands for the ticks of the busy spell: {fired:?}"
    );
    // Not a flood: far fewer messages than ticks.
    let messages = fired.len() as u64;
    let ticks: u64 = fired.iter().map(|r| 1 + r.missed).sum();
    assert!(
        messages + 10 <= ticks,
        "{messages} messages for {ticks} ticks"
    );
    let timers = setup.broker.metrics("tk").unwrap().timers;
    assert!(timers.missed_ticks >= folded.missed, "{timers:?}");
    assert_eq!(timers.fired, messages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_a_firing_gives_exactly_one_of_the_two() {
    let setup = Setup::new();
    timekeeper(&setup, "tk").await;
    let mut cancelled = Vec::new();
    for i in 0..150u64 {
        let name = format!("r{i}");
        assert_eq!(
            setup.command("tk", &format!("after:{name}:1:x")).await,
            "ok"
        );
        // Spread the cancels around the deadline: before it, at it, after it.
        if i % 3 != 0 {
            tokio::time::sleep(Duration::from_micros(400 * (i % 5))).await;
        }
        match setup
            .command("tk", &format!("cancel:{name}"))
            .await
            .as_str()
        {
            "true" => cancelled.push(name),
            "false" => {}
            other => panic!("cancel answered {other}"),
        }
    }
    // Every timer that was not cancelled fires; give them their time.
    let expected = 150 - cancelled.len();
    let fired = setup.fired_at_least("tk", expected).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fired_again = setup.fired("tk").await;
    assert_eq!(fired.len(), fired_again.len(), "nothing fires late");
    for i in 0..150u64 {
        let name = format!("r{i}");
        let deliveries = fired_again.iter().filter(|r| r.name == name).count();
        let was_cancelled = cancelled.contains(&name);
        assert_eq!(
            deliveries + usize::from(was_cancelled),
            1,
            "{name}: cancelled {was_cancelled}, delivered {deliveries} times"
        );
    }
    let timers = setup.broker.metrics("tk").unwrap().timers;
    assert_eq!(timers.cancelled, cancelled.len() as u64);
    assert_eq!(timers.fired, expected as u64);
    assert_eq!(timers.pending, 0);
    setup.assert_accounted().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_a_pending_name_again_replaces_its_timer() {
    let setup = Setup::new();
    timekeeper(&setup, "tk").await;
    assert_eq!(setup.command("tk", "after:x:30:old").await, "ok");
    assert_eq!(setup.command("tk", "after:x:60:new").await, "ok");
    // A periodic timer replaced by a one-shot one stops ticking.
    assert_eq!(setup.command("tk", "every:p:10:tick").await, "ok");
    assert_eq!(setup.command("tk", "after:p:20:once").await, "ok");
    let fired = setup.fired_at_least("tk", 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fired_later = setup.fired("tk").await;
    assert_eq!(fired.len(), fired_later.len(), "{fired_later:?}");
    let seen: Vec<(&str, &str)> = fired_later
        .iter()
        .map(|r| (r.name.as_str(), r.payload.as_str()))
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.contains(&("x", "new")) && seen.contains(&("p", "once")),
        "{seen:?}"
    );
    let x = fired_later.iter().find(|r| r.name == "x").unwrap();
    assert!(
        x.elapsed >= Duration::from_millis(60),
        "the new deadline holds"
    );
    let timers = setup.broker.metrics("tk").unwrap().timers;
    assert_eq!((timers.replaced, timers.pending), (2, 0), "{timers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_beyond_the_limits_are_refused_with_a_typed_error() {
    let engine = engine();
    let broker = Broker::with_config(
        engine.clone(),
        BrokerConfig::default().max_payload_bytes(1024),
    );
    let setup = Setup { engine, broker };
    setup
        .spawn(setup.spec("tk", "timekeeper").max_timers(3))
        .await;
    for i in 0..3 {
        let scheduled = setup.command("tk", &format!("after:t{i}:3600000:x")).await;
        assert_eq!(scheduled, "ok");
    }
    assert_eq!(
        setup.command("tk", "after:t3:3600000:x").await,
        "LimitReached(3)"
    );
    // Replacing one needs no room.
    assert_eq!(setup.command("tk", "after:t0:3600000:y").await, "ok");
    assert_eq!(setup.command("tk", "cancel:t1").await, "true");
    assert_eq!(
        setup.command("tk", "every:p:9:x").await,
        "PeriodTooShort(10ms)"
    );
    let long = "n".repeat(256);
    assert_eq!(
        setup.command("tk", &format!("after:{long}:10:x")).await,
        "NameTooLong(255)"
    );
    assert_eq!(
        setup.command("tk", "big:b:1025").await,
        "PayloadTooLarge(1024)"
    );
    assert_eq!(setup.command("tk", "big:b:1024").await, "ok");
    let timers = setup.broker.metrics("tk").unwrap().timers;
    assert_eq!(timers.pending, 3, "{timers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_turned_off_for_a_component_are_refused_as_disabled() {
    let setup = Setup::new();
    setup
        .spawn(setup.spec("tk", "timekeeper").max_timers(0))
        .await;
    assert_eq!(setup.command("tk", "after:a:1:x").await, "Disabled");
    assert_eq!(setup.command("tk", "cancel:a").await, "false");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_keep_firing_across_a_live_upgrade() {
    let setup = Setup::new();
    timekeeper(&setup, "svc").await;
    // `ticker` counts the messages of its timer `tick`, which timekeeper schedules here.
    assert_eq!(setup.command("svc", "every:tick:10:x").await, "ok");
    let ticker = load(&setup.engine, "ticker");
    setup.broker.upgrade("svc", ticker).await.unwrap();
    setup
        .wait_until(|broker| broker.metrics("svc").unwrap().timers.fired >= 3)
        .await;
    let deadline = std::time::Instant::now() + 10 * SECOND;
    while setup.count("svc").await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new version got no tick"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(setup.broker.metrics("svc").unwrap().timers.pending, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_in_a_timer_messages_handler_restarts_the_component_like_any_other() {
    let setup = Setup::new();
    timekeeper(&setup, "tk").await;
    assert_eq!(setup.command("tk", "after:boom:1:panic").await, "ok");
    setup
        .wait_until(|broker| broker.metrics("tk").unwrap().restarts == 1)
        .await;
    let state = setup
        .state_becomes("tk", |s| *s == ComponentState::Running)
        .await;
    assert_eq!(state, ComponentState::Running);
    let letters = setup.broker.dead_letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(&*letters[0].sender, "timer:boom");
    assert_eq!(letters[0].payload, b"panic");
    assert!(
        letters[0].reason.contains("asked for a panic"),
        "{}",
        letters[0].reason
    );
    // The fresh instance takes timers as before.
    assert_eq!(setup.command("tk", "after:calm:1:ok").await, "ok");
    let fired = setup.fired_at_least("tk", 1).await;
    assert_eq!(fired[0].name, "calm");
    setup.assert_accounted().await;
    let books = setup.broker.accounting();
    assert_eq!(books.dead_lettered, 1, "{books:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_end_with_their_component_and_do_not_come_back_with_it() {
    let setup = Setup::new();
    timekeeper(&setup, "tk").await;
    assert_eq!(setup.command("tk", "every:tick:10:x").await, "ok");
    assert_eq!(setup.command("tk", "after:later:50:x").await, "ok");
    setup.fired_at_least("tk", 1).await;
    setup.broker.stop("tk").await.unwrap();
    timekeeper(&setup, "tk").await;
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(
        setup.fired("tk").await.is_empty(),
        "volatile timers do not outlive their component"
    );
    assert_eq!(setup.broker.metrics("tk").unwrap().timers.pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_that_does_not_import_timers_loads_and_runs_as_before() {
    // echo never calls a timer function, so the SDK leaves the import out of it entirely.
    let needle = b"courier:actor/timers";
    let imports = |bytes: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(!imports(&guest_bytes("echo")), "echo imports timers");
    assert!(
        imports(&guest_bytes("ticker")),
        "ticker does not import timers"
    );
    let setup = Setup::new();
    setup.spawn(setup.spec("echo", "echo")).await;
    let reply = setup.broker.request("echo", b"hi".to_vec(), SECOND).await;
    assert_eq!(reply.unwrap(), b"hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ticker_counts_ticks_once_its_first_message_starts_them() {
    let setup = Setup::new();
    setup.spawn(setup.spec("ticker", "ticker")).await;
    assert_eq!(setup.count("ticker").await, 0);
    assert_eq!(setup.broker.metrics("ticker").unwrap().timers.pending, 0);
    setup.broker.send("ticker", b"start".to_vec()).unwrap();
    setup
        .wait_until(|broker| broker.metrics("ticker").unwrap().timers.pending == 1)
        .await;
    // The first tick is a second away; the test waits for it, not for a speed.
    let deadline = std::time::Instant::now() + 10 * SECOND;
    while setup.count("ticker").await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no tick in ten seconds"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn no_component_can_take_a_timers_sender_id() {
    assert_eq!(TIMER_SENDER_PREFIX, "timer:");
    assert!(courier_host_broker::check_id("timer:tick").is_err());
    assert!(courier_host_broker::check_id("timer").is_ok());
}

// Durable timers: a durable component's timers are kept in its store and come back with it.

/// Spawn `timekeeper` as the durable component `tk`.
async fn durable_timekeeper(setup: &Setup) {
    setup
        .spawn(setup.spec("tk", "timekeeper").durable(true))
        .await;
}

/// Wait until the store holds timers of `tk` that `done` accepts, and return them.
async fn stored_until(
    store: &Arc<dyn Store>,
    done: impl Fn(&[StoredTimer]) -> bool,
) -> Vec<StoredTimer> {
    let deadline = std::time::Instant::now() + 10 * SECOND;
    loop {
        let timers = store.timers("tk").await.unwrap();
        if done(&timers) {
            return timers;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tk's stored timers after ten seconds: {timers:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn names(timers: &[StoredTimer]) -> Vec<&str> {
    timers.iter().map(|t| t.name.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_timer_fires_once_after_a_crash_and_never_before_its_time() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open_in_dir(dir.path()).unwrap());
    let before = SystemTime::now();
    crashed_host(&store, |setup| async move {
        durable_timekeeper(&setup).await;
        assert_eq!(setup.command("tk", "after:late:700:x").await, "ok");
    })
    .await;
    // Kept with the batch that scheduled it, before the crash.
    let kept = stored_until(&store, |t| !t.is_empty()).await;
    assert_eq!(names(&kept), ["late"]);
    assert_eq!(kept[0].period, None);
    assert_eq!(&kept[0].payload[..], b"x");
    assert!(
        kept[0].due >= before + Duration::from_millis(700),
        "{kept:?}"
    );

    let setup = durable_setup(store.clone());
    durable_timekeeper(&setup).await;
    // Armed from the store at spawn. Read before the clock: a restart slow enough to pass
    // the deadline may have fired it already, but one before it cannot have.
    let pending = setup.broker.metrics("tk").unwrap().timers.pending;
    if SystemTime::now() < kept[0].due {
        assert_eq!(pending, 1, "the stored timer is armed at spawn");
    }
    let fired = setup.fired_at_least("tk", 1).await;
    assert!(
        SystemTime::now() >= before + Duration::from_millis(700),
        "it fired before its time"
    );
    assert_eq!(
        (fired[0].name.as_str(), fired[0].payload.as_str()),
        ("late", "x")
    );
    // A one-shot timer is done once its firing is handled: gone from the store too.
    stored_until(&store, <[StoredTimer]>::is_empty).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(setup.fired("tk").await.len(), 1, "it fired once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_periodic_timer_down_for_several_periods_fires_once_with_the_missed_count() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open_in_dir(dir.path()).unwrap());
    crashed_host(&store, |setup| async move {
        durable_timekeeper(&setup).await;
        assert_eq!(setup.command("tk", "every:tick:100:p").await, "ok");
    })
    .await;
    let kept = stored_until(&store, |t| !t.is_empty()).await;
    assert_eq!(kept[0].period, Some(Duration::from_millis(100)));
    // The host is down for at least eight periods past the stored deadline.
    let down_until = kept[0].due + Duration::from_millis(800);
    while SystemTime::now() < down_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let setup = durable_setup(store.clone());
    let restarted = std::time::Instant::now();
    durable_timekeeper(&setup).await;
    let fired = setup.fired_at_least("tk", 3).await;
    assert!(
        fired[0].missed >= 7,
        "the first message stands for the ticks missed while down: {fired:?}"
    );
    // Then back on its period: a message a tick at most, not a flood of the missed ones
    // (a loaded machine gives fewer, each counting what it missed, never more).
    let periods = restarted.elapsed().as_millis() / 100;
    assert!(
        fired.len() as u128 <= periods + 2,
        "after the catch-up, ticks come one by one: {} in {periods} periods: {fired:?}",
        fired.len()
    );
    let timers = setup.broker.metrics("tk").unwrap().timers;
    assert!(timers.missed_ticks >= fired[0].missed, "{timers:?}");
    // A handled tick moves the stored deadline on to the next one.
    stored_until(&store, |t| t.len() == 1 && t[0].due > kept[0].due).await;
    assert_eq!(setup.command("tk", "cancel:tick").await, "true");
    stored_until(&store, <[StoredTimer]>::is_empty).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_timer_cancelled_before_a_crash_never_fires_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open_in_dir(dir.path()).unwrap());
    let kept = store.clone();
    // `gone` is due late enough that a loaded machine still cancels it first (each command
    // is a commit), and early enough that the test is still looking when it would fire.
    let gone_due = crashed_host(&store, |setup| async move {
        durable_timekeeper(&setup).await;
        let gone_due = Instant::now() + Duration::from_millis(1_500);
        assert_eq!(setup.command("tk", "after:gone:1500:x").await, "ok");
        assert_eq!(setup.command("tk", "every:gone-too:50:x").await, "ok");
        assert_eq!(setup.command("tk", "after:kept:250:y").await, "ok");
        assert_eq!(setup.command("tk", "cancel:gone").await, "true");
        assert_eq!(setup.command("tk", "cancel:gone-too").await, "true");
        // Wait for the commit of the cancels, not for a firing.
        stored_until(&kept, |t| names(t) == ["kept"]).await;
        gone_due
    })
    .await;

    let setup = durable_setup(store.clone());
    durable_timekeeper(&setup).await;
    let fired = setup.fired_at_least("tk", 1).await;
    // Past the moment `gone` would have fired, and several of `gone-too`'s periods.
    tokio::time::sleep_until((gone_due + Duration::from_millis(300)).into()).await;
    let fired_later = setup.fired("tk").await;
    assert_eq!(fired.len(), fired_later.len(), "{fired_later:?}");
    assert!(
        fired_later.iter().all(|r| r.name == "kept"),
        "a cancelled timer fired after the crash: {fired_later:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_durable_component_keeps_its_timers_and_a_removed_one_forgets_them() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open_in_dir(dir.path()).unwrap());
    let setup = durable_setup(store.clone());
    durable_timekeeper(&setup).await;
    // Late enough that a loaded machine stops it first.
    assert_eq!(setup.command("tk", "after:soon:1000:x").await, "ok");
    setup.broker.stop("tk").await.unwrap();
    assert_eq!(names(&store.timers("tk").await.unwrap()), ["soon"]);
    durable_timekeeper(&setup).await;
    let fired = setup.fired_at_least("tk", 1).await;
    assert_eq!(fired[0].name, "soon", "it came back with its component");

    assert_eq!(setup.command("tk", "every:tick:20:x").await, "ok");
    stored_until(&store, |t| names(t) == ["tick"]).await;
    setup.broker.remove("tk").await.unwrap();
    assert!(
        store.timers("tk").await.unwrap().is_empty(),
        "a removed component's timers end with it"
    );
    durable_timekeeper(&setup).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(setup.fired("tk").await.is_empty());
    assert_eq!(setup.broker.metrics("tk").unwrap().timers.pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_stopped_durable_component_forgets_its_stored_timers() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open_in_dir(dir.path()).unwrap());
    let setup = durable_setup(store.clone());
    durable_timekeeper(&setup).await;
    assert_eq!(setup.command("tk", "every:tick:50:x").await, "ok");
    stored_until(&store, |t| names(t) == ["tick"]).await;
    setup.broker.stop("tk").await.unwrap();
    setup.broker.remove("tk").await.unwrap();
    assert!(
        store.timers("tk").await.unwrap().is_empty(),
        "a stopped component's timers end when it is removed"
    );
    // Nothing of it is left to remove, and an id never seen was never there.
    for id in ["tk", "never-spawned"] {
        let err = setup.broker.remove(id).await.unwrap_err();
        assert!(matches!(err, BrokerError::NotFound(_)), "{id}: {err}");
    }
    durable_timekeeper(&setup).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(setup.fired("tk").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_components_timers_stay_stored_across_a_live_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open_in_dir(dir.path()).unwrap());
    let setup = durable_setup(store.clone());
    durable_timekeeper(&setup).await;
    assert_eq!(setup.command("tk", "every:tick:20:x").await, "ok");
    let ticker = load(&setup.engine, "ticker");
    setup.broker.upgrade("tk", ticker).await.unwrap();
    setup
        .wait_until(|broker| broker.metrics("tk").unwrap().timers.fired >= 3)
        .await;
    let kept = stored_until(&store, |t| !t.is_empty()).await;
    assert_eq!(names(&kept), ["tick"]);
    assert_eq!(kept[0].period, Some(Duration::from_millis(20)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_timers_over_a_durable_components_limit_are_dropped_and_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open_in_dir(dir.path()).unwrap());
    for name in ["a", "b", "c"] {
        let timer = StoredTimer {
            actor: "tk".into(),
            name: name.into(),
            due: SystemTime::now() + 3600 * SECOND,
            period: None,
            payload: bytes::Bytes::from_static(b"x"),
        };
        store.put_timer(timer).await.unwrap();
    }
    let setup = durable_setup(store.clone());
    setup
        .spawn(setup.spec("tk", "timekeeper").durable(true).max_timers(1))
        .await;
    assert_eq!(setup.broker.metrics("tk").unwrap().timers.pending, 1);
    // The next commit, after any handled message, forgets the ones it could not take.
    assert_eq!(setup.command("tk", "cancel:none").await, "false");
    let kept = stored_until(&store, |t| t.len() == 1).await;
    assert_eq!(
        setup
            .command("tk", &format!("cancel:{}", kept[0].name))
            .await,
        "true"
    );
    stored_until(&store, <[StoredTimer]>::is_empty).await;
}
