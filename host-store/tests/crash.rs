//! A process killed with SIGKILL at random moments loses nothing it was told was stored, and
//! stores nothing twice.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use courier_host_store::{Appended, Batch, Kind, Outgoing, RedbStore, Store};

use crate::support::{
    PATH_ENV, Random, child_role, entry, lines_with, number, spawn_child, wait_for_line,
};

const ACTORS: u64 = 4;
const ROUNDS: usize = 6;

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// Child: for each actor, append numbered entries in small batches and consume the oldest in
/// commits that save the highest consumed number as state and put it in the outbox, saying
/// what it tries and what was acknowledged, until killed.
#[test]
fn child_writing_until_killed() {
    if child_role().as_deref() != Some("crash") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Arc::new(RedbStore::open(std::env::var(PATH_ENV).unwrap()).unwrap());
        let tasks: Vec<_> = (0..ACTORS)
            .map(|actor| tokio::spawn(write_until_killed(store.clone(), format!("actor-{actor}"))))
            .collect();
        say("ready".to_string());
        for task in tasks {
            task.await.unwrap();
        }
    });
}

async fn write_until_killed(store: Arc<RedbStore>, actor: String) {
    let recovered = store.load(&actor).await.unwrap();
    let consumed = recovered.state.as_deref().map_or(0, number);
    let mut held: VecDeque<(u64, u64)> = recovered
        .mailbox
        .iter()
        .map(|e| (e.position, e.seq.unwrap()))
        .collect();
    let mut outbox: Vec<u64> = recovered.outbox.iter().map(|o| o.seq).collect();
    let mut next = held.back().map_or(consumed, |&(_, seq)| seq) + 1;
    if next > 1 {
        // Sent again after the restart, the last entry is a duplicate.
        let again = store
            .append(vec![entry(&actor, "s", next - 1)])
            .await
            .unwrap();
        assert_eq!(again[0], Appended::Duplicate, "{actor} {}", next - 1);
    }
    let mut round = 0u64;
    loop {
        round += 1;
        let count = 1 + (round * 7 + next) % 6;
        say(format!("try {actor} {}", next + count - 1));
        let entries = (next..next + count)
            .map(|seq| entry(&actor, "s", seq))
            .collect();
        let appended = store.append(entries).await.unwrap();
        for (seq, appended) in (next..).zip(appended) {
            let position = appended.position().expect("a new number is stored");
            held.push_back((position, seq));
            say(format!("ack {actor} {seq}"));
        }
        next += count;
        if round.is_multiple_of(3) {
            let take = held.len() / 2;
            let consumed: Vec<(u64, u64)> = held.drain(..take).collect();
            let Some(&(_, highest)) = consumed.last() else {
                continue;
            };
            let mut batch = Batch::new(&actor);
            batch.consumed = consumed.iter().map(|&(position, _)| position).collect();
            batch.state = Some(Bytes::from(highest.to_string()));
            batch.produced = vec![Outgoing::new(
                "sink",
                Kind::Message,
                Bytes::from(highest.to_string()),
            )];
            batch.delivered = std::mem::take(&mut outbox);
            outbox = store.commit(batch).await.unwrap().produced;
            say(format!("consumed {actor} {highest}"));
        }
    }
}

/// What the child said it tried, had acknowledged and consumed, per actor.
#[derive(Default)]
struct Said {
    tried: BTreeMap<String, u64>,
    acked: BTreeMap<String, Vec<u64>>,
    consumed: BTreeMap<String, u64>,
}

impl Said {
    fn read(&mut self, lines: Vec<String>) {
        for line in lines {
            let mut words = line.split(' ');
            let (Some(what), Some(actor), Some(n)) = (words.next(), words.next(), words.next())
            else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else {
                // A line cut by the kill.
                continue;
            };
            let actor = actor.to_string();
            match what {
                "try" => {
                    let tried = self.tried.entry(actor).or_default();
                    *tried = (*tried).max(n);
                }
                "ack" => self.acked.entry(actor).or_default().push(n),
                "consumed" => {
                    let consumed = self.consumed.entry(actor).or_default();
                    *consumed = (*consumed).max(n);
                }
                _ => {}
            }
        }
    }
}

/// Every acknowledged entry is in the store exactly once (in the mailbox, or consumed and
/// counted in the state), in order, and nothing that was not tried is there.
fn check(path: &Path, said: &Said) {
    let store = RedbStore::open(path).expect("the store opens after the kill");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for actor in (0..ACTORS).map(|a| format!("actor-{a}")) {
        let recovered = runtime.block_on(store.load(&actor)).unwrap();
        let consumed = recovered.state.as_deref().map_or(0, number);
        let held: Vec<u64> = recovered.mailbox.iter().map(|e| e.seq.unwrap()).collect();
        let expected: Vec<u64> = (consumed + 1..=consumed + held.len() as u64).collect();
        assert_eq!(
            held, expected,
            "{actor}: the mailbox follows the state without a gap or a repeat"
        );
        let highest = consumed + held.len() as u64;
        for &acked in said.acked.get(&actor).into_iter().flatten() {
            assert!(
                acked <= highest,
                "{actor}: acknowledged {acked} is lost (store holds up to {highest})"
            );
        }
        let tried = said.tried.get(&actor).copied().unwrap_or(0);
        assert!(
            highest <= tried,
            "{actor}: {highest} stored but only {tried} tried"
        );
        let told = said.consumed.get(&actor).copied().unwrap_or(0);
        assert!(
            consumed >= told,
            "{actor}: consumed {told} was committed, state says {consumed}"
        );
        // The state and the outbox were committed together.
        if consumed > 0 {
            let last = recovered.outbox.last().expect("the commit's outbox entry");
            assert_eq!(
                number(&last.payload),
                consumed,
                "{actor}: outbox and state disagree"
            );
        }
    }
}

#[test]
fn a_process_killed_at_random_moments_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(courier_host_store::FILE_NAME);
    drop(RedbStore::open(&path).unwrap());
    let mut random = Random::from_clock();
    let mut said = Said::default();
    let mut acked = 0;
    for round in 0..ROUNDS {
        let mut child = spawn_child("crash::child_writing_until_killed", "crash", &path, &[]);
        let reader = wait_for_line(child.stdout.take().unwrap(), "ready");
        let wait = Duration::from_millis(random.between(30..400));
        std::thread::sleep(wait);
        assert!(
            child.try_wait().unwrap().is_none(),
            "round {round}: the child ended before it was killed"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        let lines = lines_with(reader, "");
        acked += lines.iter().filter(|l| l.starts_with("ack ")).count();
        said.read(lines);
        check(&path, &said);
    }
    assert!(
        acked > 100,
        "the child acknowledged only {acked} entries in {ROUNDS} rounds"
    );
}
