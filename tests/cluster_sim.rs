//! Membership and failure detection in the deterministic simulation:
//! convergence, crash detection, restarts, partitions, refusals,
//! determinism. Each test prints what it measured (`--nocapture`).

use ringkv::cluster::membership::{ClusterSettings, Millis, Status};
use ringkv::cluster::sim::{Sim, SimConfig};

fn config(seed: u64) -> SimConfig {
    SimConfig {
        seed,
        ..SimConfig::default()
    }
}

fn rounds(sim: &Sim, ms: u64) -> f64 {
    ms as f64 / sim.interval_ms() as f64
}

/// A cluster of `n` nodes that has converged, with no false alarms.
fn converged_cluster(n: usize, cfg: SimConfig) -> Sim {
    let mut sim = Sim::new(n, cfg);
    sim.run_until_true(Millis(60_000), Sim::converged)
        .unwrap_or_else(|| panic!("{n} nodes did not converge in 60 s"));
    sim
}

#[test]
fn a_cold_start_through_one_seed_converges_in_a_few_rounds() {
    for (n, loss) in [(16usize, 0.0), (128, 0.0), (128, 0.05)] {
        let mut sim = Sim::new(n, SimConfig { loss, ..config(3) });
        let at = sim
            .run_until_true(Millis(60_000), Sim::converged)
            .unwrap_or_else(|| panic!("{n} nodes did not converge"));
        let r = rounds(&sim, at.0);
        println!(
            "cold start, {n:>3} nodes, {:>2.0}% loss: all see all Up after {r:.1} rounds",
            loss * 100.0
        );
        assert!(r <= 8.0, "{n} nodes took {r} rounds");
        assert!(sim.false_downs().is_empty());
    }
}

/// How news spreads: a new node joins a converged cluster through node 0;
/// the rest learn of it only by epidemic gossip. Rounds grow with log n.
#[test]
fn news_of_a_join_reaches_every_node_in_logarithmic_rounds() {
    let mut measured = Vec::new();
    // One seed at 256 nodes keeps the debug-build test under a few seconds.
    for (n, seeds) in [
        (16usize, &[11u64, 12, 13][..]),
        (64, &[11, 12, 13]),
        (256, &[11]),
    ] {
        let mut total = 0.0;
        for &seed in seeds {
            let mut sim = converged_cluster(n, config(seed));
            let start = sim.now();
            let joiner = sim.add_node();
            let at = sim
                .run_until_true(start.plus(60_000), |s| s.all_see(joiner, Status::Up))
                .unwrap_or_else(|| panic!("{n} nodes never all saw the joiner"));
            total += rounds(&sim, at.since(start));
            assert!(sim.false_downs().is_empty());
        }
        let mean = total / seeds.len() as f64;
        let log2 = (n as f64).log2();
        println!("join into {n:>3} nodes: everyone sees it Up after {mean:.1} rounds (mean of {} seeds); log2(n) = {log2:.0}", seeds.len());
        assert!(mean <= log2 + 2.0, "{n} nodes: {mean} rounds");
        measured.push(mean);
    }
    // 16x the nodes must cost far less than 16x the rounds: logarithmic, not linear.
    assert!(measured[2] <= 2.5 * measured[0], "{measured:?}");
}

#[test]
fn live_nodes_stay_well_inside_the_suspicion_timeout_under_loss() {
    let cfg = SimConfig {
        loss: 0.05,
        ..config(5)
    };
    let suspect_after = cfg.gossip.suspect_after_ms;
    let mut sim = converged_cluster(64, cfg);
    let end = sim.now().plus(60_000);
    let mut worst = 0;
    while sim.now() < end {
        sim.run_for(100);
        worst = worst.max(sim.max_silence_ms());
    }
    println!("64 nodes, 5% loss, 60 s: longest silence of a live node {worst} ms (suspect after {suspect_after} ms)");
    assert!(
        worst * 3 / 2 < suspect_after,
        "live nodes came within 1.5x of suspicion: {worst} ms"
    );
    assert!(sim.false_downs().is_empty());
    assert!(!sim
        .status_log()
        .iter()
        .any(|e| e.to == Status::Suspect && e.subject_reachable));
}

#[test]
fn a_stopped_node_is_marked_down_by_all_within_the_timeout() {
    let cfg = config(21);
    let down_after = cfg.gossip.down_after_ms;
    let interval = cfg.gossip.interval_ms;
    let mut sim = converged_cluster(10, cfg);
    sim.run_for(5_000);
    let stopped_at = sim.now();
    sim.stop(3);
    let at = sim
        .run_until_true(stopped_at.plus(60_000), |s| s.all_see(3, Status::Down))
        .expect("every node marks the stopped node down");
    let took = at.since(stopped_at);
    println!(
        "stopped node marked Down by all 9 others after {took} ms (down_after {down_after} ms)"
    );
    // Its last heartbeat may still be spreading for a few rounds after the stop.
    assert!(took <= down_after + 3 * interval, "took {took} ms");
    assert!(
        took >= down_after,
        "marked down before the timeout: {took} ms"
    );
    // Everyone suspected it first.
    let id = sim.id(3);
    for observer in (0..10).filter(|&i| i != 3) {
        let seen: Vec<Status> = sim
            .status_log()
            .iter()
            .filter(|e| e.observer == observer && e.subject == id && e.at >= stopped_at)
            .map(|e| e.to)
            .collect();
        assert_eq!(seen, [Status::Suspect, Status::Down], "node {observer}");
    }
    assert!(sim.false_downs().is_empty());
}

#[test]
fn a_restarted_node_comes_back_up_with_a_higher_incarnation() {
    let mut sim = converged_cluster(10, config(22));
    sim.stop(4);
    sim.run_until_true(sim.now().plus(30_000), |s| s.all_see(4, Status::Down))
        .expect("stopped node goes down");
    sim.restart(4);
    let restarted_at = sim.now();
    let at = sim
        .run_until_true(restarted_at.plus(30_000), Sim::converged)
        .expect("restarted node rejoins");
    println!(
        "restarted node seen Up again by all after {:.1} rounds",
        rounds(&sim, at.since(restarted_at))
    );
    let id = sim.id(4);
    for i in (0..10).filter(|&i| i != 4) {
        let m = sim.view(i).and_then(|v| v.member(id)).expect("known");
        assert_eq!((m.status, m.incarnation.0), (Status::Up, 2), "node {i}");
    }
    // A quick restart, before anyone noticed: the new incarnation simply
    // replaces the old entry, with no Down on the way.
    let before = sim.status_log().len();
    sim.stop(7);
    sim.run_for(1_000);
    sim.restart(7);
    sim.run_until_true(sim.now().plus(30_000), Sim::converged)
        .expect("quick restart converges");
    assert!(sim.status_log()[before..]
        .iter()
        .all(|e| e.to != Status::Down));
    assert_eq!(
        sim.view(0)
            .and_then(|v| v.member(sim.id(7)))
            .map(|m| m.incarnation.0),
        Some(2)
    );
}

#[test]
fn both_sides_of_a_partition_see_the_other_down_and_converge_after_heal() {
    let cfg = config(23);
    let down_after = cfg.gossip.down_after_ms;
    let mut sim = converged_cluster(10, cfg);
    let left: Vec<usize> = (0..5).collect();
    let right: Vec<usize> = (5..10).collect();
    sim.partition(&[&left, &right]);
    let cut_at = sim.now();
    sim.run_until_true(cut_at.plus(60_000), |s| {
        left.iter().all(|&r| {
            right.iter().all(|&l| {
                s.view(l).and_then(|v| v.status(s.id(r))) == Some(Status::Down)
                    && s.view(r).and_then(|v| v.status(s.id(l))) == Some(Status::Down)
            })
        })
    })
    .expect("each side marks the other down");
    // Within a side, everyone stays Up.
    for side in [&left, &right] {
        for &a in side.iter() {
            for &b in side.iter() {
                if a != b {
                    assert_eq!(
                        sim.view(a).and_then(|v| v.status(sim.id(b))),
                        Some(Status::Up)
                    );
                }
            }
        }
    }
    sim.run_for(down_after);
    sim.heal();
    let healed_at = sim.now();
    let at = sim
        .run_until_true(healed_at.plus(60_000), Sim::converged)
        .expect("converges after heal");
    println!(
        "partition 5|5 healed: all Up again after {:.1} rounds",
        rounds(&sim, at.since(healed_at))
    );
    assert!(at.since(healed_at) <= 10 * sim.interval_ms());
}

/// A scenario with loss, a partition, a restart and a leave.
fn eventful_run(seed: u64) -> (Sim, [u8; 32]) {
    let mut sim = Sim::new(
        12,
        SimConfig {
            loss: 0.05,
            ..config(seed)
        },
    );
    sim.run_for(10_000);
    sim.partition(&[&[0, 1, 2, 3], &[4, 5, 6, 7]]);
    sim.run_for(10_000);
    sim.stop(9);
    sim.heal();
    sim.run_for(10_000);
    sim.restart(9);
    sim.leave(11);
    sim.run_for(10_000);
    let hash = sim.trace_hash();
    (sim, hash)
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let (a, hash_a) = eventful_run(42);
    let (b, hash_b) = eventful_run(42);
    let (_, hash_c) = eventful_run(43);
    assert_eq!(hash_a, hash_b);
    assert_eq!(a.stats(), b.stats());
    assert_eq!(a.status_log(), b.status_log());
    assert_ne!(
        hash_a, hash_c,
        "a different seed should give a different run"
    );
    println!("seed 42: trace {:02x?}..., {:?}", &hash_a[..8], a.stats());
}

#[test]
fn a_node_with_a_different_partition_count_is_refused() {
    let mut sim = converged_cluster(5, config(24));
    let odd = sim.start_with_settings(ClusterSettings {
        partitions: 128,
        ..ClusterSettings::default()
    });
    sim.run_for(10_000);
    let odd_id = sim.id(odd);
    for i in 0..5 {
        assert!(
            sim.view(i).and_then(|v| v.member(odd_id)).is_none(),
            "node {i} merged it"
        );
    }
    let own_view = sim.view(odd).expect("running");
    assert_eq!(
        own_view.members().count(),
        1,
        "the refused node learned no one"
    );
    let reasons: Vec<&String> = sim.rejections().iter().map(|(_, r)| r).collect();
    assert!(reasons.iter().any(|r| r.contains("Q=128")), "{reasons:?}");
    assert!(
        sim.rejections().iter().any(|(i, _)| *i == odd),
        "the refused node is told"
    );
    assert!(
        sim.rejections().iter().any(|(i, _)| *i == 0),
        "the seed reports it"
    );
}

#[test]
fn a_member_that_left_stays_left_until_it_restarts() {
    let mut sim = converged_cluster(6, config(25));
    sim.leave(5);
    sim.run_until_true(sim.now().plus(10_000), |s| s.all_see(5, Status::Left))
        .expect("the leave spreads");
    // It keeps gossiping, yet nobody revives it, and it is out of the ring.
    sim.run_for(20_000);
    assert!(sim.all_see(5, Status::Left));
    assert!(!sim
        .view(0)
        .expect("running")
        .ring_members()
        .contains(&sim.id(5)));

    // Forgetting a crashed member works the same way.
    sim.stop(4);
    sim.forget(0, 4);
    sim.run_until_true(sim.now().plus(10_000), |s| s.all_see(4, Status::Left))
        .expect("the forget spreads");
    sim.run_for(20_000);
    assert!(sim.all_see(4, Status::Left));

    // A new life of a forgotten node joins again.
    sim.restart(4);
    sim.run_until_true(sim.now().plus(10_000), |s| s.all_see(4, Status::Up))
        .expect("a restarted node rejoins");
    assert!(sim
        .view(1)
        .expect("running")
        .ring_members()
        .contains(&sim.id(4)));
}
