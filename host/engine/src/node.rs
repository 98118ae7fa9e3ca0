//! Who this node is among those sharing a database, and its part of the cluster's limits:
//! plain values, known to the parts that split their limits (dispatch, callouts, the engine)
//! and to the outbox, without them knowing the cluster's membership (`cluster.rs`).

use std::time::Duration;

/// Who this node is, and how soon a silent node is taken for dead.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Unique among the nodes sharing a database (default: the host name).
    pub name: String,
    /// Where other nodes reach this node's API.
    pub http_url: String,
    /// A node whose heartbeat is this old is dead (default 5 s).
    pub dead_after: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: "local".into(),
            http_url: String::new(),
            dead_after: Duration::from_secs(5),
        }
    }
}

/// This node's part of the cluster's limits (a trunk's calls per second and channels, an
/// account's, a callout's rate): of `nodes` running nodes it is the `rank`-th by name, and
/// takes `1/nodes` of each rate and its slice of each cap, so all nodes together keep to the
/// configured figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub nodes: usize,
    pub rank: usize,
}

impl Share {
    /// The whole of every limit: one node.
    pub const ALONE: Share = Share { nodes: 1, rank: 0 };

    /// This node's part of a rate.
    pub fn rate(&self, total: f64) -> f64 {
        total / self.nodes.max(1) as f64
    }

    /// This node's part of a cap of `total`: the parts of all nodes add up to it exactly (the
    /// first `total % nodes` nodes by name take one more). A part may be 0: this node then
    /// starts none. (A `total` of 0, which configurations use for "no limit", is the caller's
    /// to treat before asking.)
    pub fn cap(&self, total: usize) -> usize {
        let nodes = self.nodes.max(1);
        total / nodes + usize::from(self.rank < total % nodes)
    }

    /// The share of `me` among `running` (names of the nodes that beat; `me` counts even if
    /// its own row is not among them yet).
    pub fn of(me: &str, running: &[&str]) -> Share {
        let mut names: Vec<&str> = running.to_vec();
        if !names.contains(&me) {
            names.push(me);
        }
        names.sort_unstable();
        names.dedup();
        Share {
            nodes: names.len(),
            rank: names.iter().position(|n| *n == me).unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parts_of_every_limit_add_up_to_it() {
        for nodes in 1..=5 {
            for total in [1usize, 2, 3, 7, 20, 100] {
                let parts: Vec<_> = (0..nodes)
                    .map(|rank| Share { nodes, rank }.cap(total))
                    .collect();
                assert_eq!(
                    parts.iter().sum::<usize>(),
                    total,
                    "{total} over {nodes}: {parts:?}"
                );
                assert!(parts.iter().max().unwrap() - parts.iter().min().unwrap() <= 1);
            }
            let rates: f64 = (0..nodes)
                .map(|rank| Share { nodes, rank }.rate(50.0))
                .sum();
            assert!((rates - 50.0).abs() < 1e-9);
        }
        assert_eq!(Share::ALONE.cap(20), 20);
    }

    #[test]
    fn a_nodes_share_follows_the_names_that_beat() {
        assert_eq!(
            Share::of("b", &["c", "a", "b"]),
            Share { nodes: 3, rank: 1 }
        );
        // not yet seen in the table: counted anyway
        assert_eq!(Share::of("b", &["a"]), Share { nodes: 2, rank: 1 });
        assert_eq!(Share::of("a", &[]), Share::ALONE);
    }
}
