//! Membership scenarios as small scripts over the deterministic simulation.
//!
//! One command per line; `#` starts a comment. Nodes are numbered from 0.
//!
//! ```text
//! start 5 [seed 7] [loss 0.05]   a new simulated cluster of 5 nodes
//! run 10s | run 500ms            advance virtual time
//! partition 0,1 | 2,3,4          cut the network into groups
//! heal                           remove every cut
//! stop 3 / restart 3             crash a node / bring it back (new incarnation)
//! leave 3 / forget 0 3           node 3 leaves / node 0 forgets node 3
//! loss 0.1                       message loss from now on
//! expect converged               every running node sees every running node Up
//! expect 0 sees 3 down           node 0's opinion of node 3 (up|suspect|down|left)
//! expect all see 3 left          every other running node's opinion of node 3
//! expect 0 incarnation of 3 is 2
//! expect no false downs          no reachable running node was ever declared Down
//! ```

use ringkv::cluster::membership::Status;
use ringkv::cluster::sim::{Sim, SimConfig};

fn parse_ms(s: &str) -> u64 {
    if let Some(ms) = s.strip_suffix("ms") {
        ms.parse().unwrap_or_else(|_| panic!("bad duration {s}"))
    } else if let Some(secs) = s.strip_suffix('s') {
        secs.parse::<u64>()
            .unwrap_or_else(|_| panic!("bad duration {s}"))
            * 1000
    } else {
        panic!("duration needs a unit (ms or s): {s}")
    }
}

fn parse_status(s: &str) -> Status {
    match s {
        "up" => Status::Up,
        "suspect" => Status::Suspect,
        "down" => Status::Down,
        "left" => Status::Left,
        other => panic!("unknown status {other}"),
    }
}

fn node(s: &str) -> usize {
    s.parse().unwrap_or_else(|_| panic!("bad node number {s}"))
}

/// Run `script`, panicking with the line number on the first failed expectation.
fn run(script: &str) {
    let mut sim: Option<Sim> = None;
    for (n, raw) in script.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = format!("line {}: `{line}`", n + 1);
        if words[0] == "start" {
            let mut cfg = SimConfig::default();
            for pair in words[2..].chunks(2) {
                match pair {
                    ["seed", v] => cfg.seed = v.parse().expect("seed"),
                    ["loss", v] => cfg.loss = v.parse().expect("loss"),
                    _ => panic!("{at}: bad start option"),
                }
            }
            sim = Some(Sim::new(node(words[1]), cfg));
            continue;
        }
        let sim = sim
            .as_mut()
            .unwrap_or_else(|| panic!("{at}: `start` first"));
        match words.as_slice() {
            ["run", d] => sim.run_for(parse_ms(d)),
            ["heal"] => sim.heal(),
            ["stop", i] => sim.stop(node(i)),
            ["restart", i] => sim.restart(node(i)),
            ["leave", i] => sim.leave(node(i)),
            ["forget", a, b] => sim.forget(node(a), node(b)),
            ["loss", p] => sim.set_loss(p.parse().expect("loss")),
            ["partition", ..] => {
                let groups: Vec<Vec<usize>> = line["partition".len()..]
                    .split('|')
                    .map(|g| g.split(',').map(|x| node(x.trim())).collect())
                    .collect();
                let refs: Vec<&[usize]> = groups.iter().map(Vec::as_slice).collect();
                sim.partition(&refs);
            }
            ["expect", "converged"] => assert!(sim.converged(), "{at}: not converged"),
            ["expect", "no", "false", "downs"] => {
                assert!(
                    sim.false_downs().is_empty(),
                    "{at}: {:?}",
                    sim.false_downs()
                )
            }
            ["expect", "all", "see", j, status] => {
                assert!(
                    sim.all_see(node(j), parse_status(status)),
                    "{at}: not everyone does"
                )
            }
            ["expect", i, "sees", j, status] => {
                let seen = sim.view(node(i)).and_then(|v| v.status(sim.id(node(j))));
                assert_eq!(seen, Some(parse_status(status)), "{at}");
            }
            ["expect", i, "incarnation", "of", j, "is", inc] => {
                let seen = sim
                    .view(node(i))
                    .and_then(|v| v.member(sim.id(node(j))))
                    .map(|m| m.incarnation.0);
                assert_eq!(seen, Some(inc.parse().expect("incarnation")), "{at}");
            }
            _ => panic!("{at}: unknown command"),
        }
    }
}

#[test]
fn five_nodes_through_a_partition_a_crash_and_a_restart() {
    run("
        start 5 seed 3
        run 5s
        expect converged

        partition 0,1 | 2,3,4
        run 4s
        expect 0 sees 3 up            # not yet: the timeout is 10 s
        run 8s
        expect 0 sees 3 down
        expect 3 sees 0 down
        expect 0 sees 1 up
        expect 4 sees 2 up

        heal
        run 3s
        expect converged

        stop 4
        run 6s
        expect all see 4 suspect
        run 6s
        expect all see 4 down
        restart 4
        run 3s
        expect converged
        expect 0 incarnation of 4 is 2
        expect no false downs
    ");
}

#[test]
fn leaving_and_forgetting_spread_and_stick() {
    run("
        start 5 seed 4 loss 0.05
        run 8s
        expect converged
        leave 4
        run 3s
        expect all see 4 left
        run 30s
        expect all see 4 left         # still gossiping, never revived

        stop 3
        forget 0 3
        run 3s
        expect all see 3 left
        restart 3                     # a new life rejoins
        run 3s
        expect 0 sees 3 up
        expect 1 incarnation of 3 is 2
    ");
}

#[test]
fn a_minority_side_keeps_its_own_view_under_loss() {
    run("
        start 7 seed 5 loss 0.1
        run 8s
        expect converged
        partition 0 | 1,2,3,4,5,6
        run 15s
        expect all see 0 down
        expect 0 sees 6 down
        expect 1 sees 6 up
        heal
        run 4s
        expect converged
        expect no false downs
    ");
}
