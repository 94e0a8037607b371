//! Load order from the dependency graph (buntime.md §5.4, made strict where Buntime is lax):
//! plugins whose required dependency is absent are skipped (with the reason), repeatedly, so
//! their dependents go too; optional dependencies order only when present; the rest is a
//! topological sort (Kahn) with ties in scan order. A cycle is an error naming its members.

use std::collections::{BTreeSet, HashMap};

/// A plugin left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The plugin's name.
    pub name: String,
    /// The dependency that is missing.
    pub missing: String,
}

/// The node of the graph: a name and its required and optional dependencies.
pub struct Node<'a> {
    /// The plugin's name.
    pub name: &'a str,
    /// Must load first; absent → this plugin is skipped.
    pub requires: &'a [String],
    /// Load first when present.
    pub optional: &'a [String],
}

/// Indices of `nodes` in load order, and the skipped plugins.
///
/// # Errors
/// The names on a dependency cycle, each depending on the next (`a → b → a`).
pub fn load_order(nodes: &[Node<'_>]) -> Result<(Vec<usize>, Vec<Skipped>), Vec<String>> {
    let index: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.name, i)).collect();
    let mut alive: Vec<bool> = vec![true; nodes.len()];
    let mut skipped = Vec::new();
    loop {
        let mut changed = false;
        for (i, node) in nodes.iter().enumerate() {
            if !alive[i] {
                continue;
            }
            if let Some(missing) = node.requires.iter().find(|d| index.get(d.as_str()).is_none_or(|&j| !alive[j])) {
                alive[i] = false;
                skipped.push(Skipped { name: node.name.to_string(), missing: missing.clone() });
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    // Edges dependency → dependent, among the plugins that stay.
    let deps_of = |i: usize| -> Vec<usize> {
        nodes[i]
            .requires
            .iter()
            .chain(nodes[i].optional.iter())
            .filter_map(|d| index.get(d.as_str()).copied())
            .filter(|&j| alive[j])
            .collect()
    };
    let mut pending: Vec<usize> = (0..nodes.len()).map(|i| if alive[i] { deps_of(i).len() } else { 0 }).collect();
    let mut ready: BTreeSet<usize> = (0..nodes.len()).filter(|&i| alive[i] && pending[i] == 0).collect();
    let mut order = Vec::new();
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for j in 0..nodes.len() {
            if alive[j] && !order.contains(&j) {
                let n = deps_of(j).iter().filter(|&&d| d == i).count();
                if n > 0 {
                    pending[j] -= n;
                    if pending[j] == 0 {
                        ready.insert(j);
                    }
                }
            }
        }
    }
    let live = alive.iter().filter(|a| **a).count();
    if order.len() < live {
        let stuck: Vec<usize> = (0..nodes.len()).filter(|&i| alive[i] && !order.contains(&i)).collect();
        return Err(find_cycle(&stuck, &deps_of).into_iter().map(|i| nodes[i].name.to_string()).collect());
    }
    Ok((order, skipped))
}

/// A cycle among `stuck` (every stuck node has a stuck dependency, so walking dependencies
/// from any of them must revisit a node).
fn find_cycle(stuck: &[usize], deps_of: &dyn Fn(usize) -> Vec<usize>) -> Vec<usize> {
    let mut path = vec![stuck[0]];
    loop {
        let last = *path.last().expect("the path is never empty");
        let Some(next) = deps_of(last).into_iter().find(|d| stuck.contains(d)) else { return path };
        if let Some(pos) = path.iter().position(|&p| p == next) {
            let mut cycle = path[pos..].to_vec();
            cycle.push(next);
            return cycle;
        }
        path.push(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("p{i}")).collect()
    }

    fn run(deps: &[(Vec<String>, Vec<String>)], names: &[String]) -> Result<(Vec<usize>, Vec<Skipped>), Vec<String>> {
        let nodes: Vec<Node> =
            names.iter().zip(deps).map(|(n, (r, o))| Node { name: n, requires: r, optional: o }).collect();
        load_order(&nodes)
    }

    #[test]
    fn missing_dependencies_skip_transitively_and_cycles_are_named() {
        let n = names(4);
        let deps = vec![
            (vec!["p1".into()], vec![]),
            (vec!["nope".into()], vec![]),
            (vec![], vec!["p1".into(), "p0".into(), "absent".into()]),
            (vec![], vec![]),
        ];
        let (order, skipped) = run(&deps, &n).unwrap();
        assert_eq!(order, [2, 3]);
        assert_eq!(
            skipped,
            [
                Skipped { name: "p1".into(), missing: "nope".into() },
                Skipped { name: "p0".into(), missing: "p1".into() }
            ]
        );
        let deps = vec![
            (vec!["p1".into()], vec![]),
            (vec![], vec!["p2".into()]),
            (vec!["p0".into()], vec![]),
            (vec![], vec![]),
        ];
        let cycle = run(&deps, &n).unwrap_err();
        assert_eq!(cycle.first(), cycle.last());
        assert_eq!(cycle.len(), 4, "{cycle:?}");
        let self_loop = vec![(vec!["p0".into()], vec![])];
        assert_eq!(run(&self_loop, &names(1)).unwrap_err(), ["p0", "p0"]);
    }

    proptest! {
        /// Random graphs: a result either orders every kept plugin after everything it depends
        /// on (and keeps exactly the plugins whose required closure exists), or names a real cycle.
        #[test]
        fn order_respects_every_edge(n in 1usize..9, edges in proptest::collection::vec((0usize..10, 0usize..10, any::<bool>()), 0..16)) {
            let names = names(n);
            let mut deps: Vec<(Vec<String>, Vec<String>)> = vec![(vec![], vec![]); n];
            for (from, to, required) in edges {
                if from >= n { continue; }
                // `to` past n is a missing plugin.
                let dep = format!("p{to}");
                if required { deps[from].0.push(dep) } else { deps[from].1.push(dep) }
            }
            match run(&deps, &names) {
                Ok((order, skipped)) => {
                    prop_assert_eq!(order.len() + skipped.len(), n);
                    let pos = |name: &str| order.iter().position(|&i| names[i] == name);
                    for &i in &order {
                        for d in deps[i].0.iter() {
                            let p = pos(d);
                            prop_assert!(p.is_some(), "kept {} without its required {}", names[i], d);
                            prop_assert!(p < pos(&names[i]), "{} before its dependency {}", names[i], d);
                        }
                        for d in deps[i].1.iter() {
                            if let Some(p) = pos(d) { prop_assert!(Some(p) < pos(&names[i])); }
                        }
                    }
                    for s in &skipped {
                        prop_assert!(pos(&s.missing).is_none());
                    }
                }
                Err(cycle) => {
                    prop_assert!(cycle.len() >= 2);
                    prop_assert_eq!(cycle.first(), cycle.last());
                    // Each member depends on the next one.
                    for w in cycle.windows(2) {
                        let i = names.iter().position(|x| *x == w[0]).unwrap();
                        prop_assert!(deps[i].0.contains(&w[1]) || deps[i].1.contains(&w[1]), "{:?}", cycle);
                    }
                }
            }
        }
    }
}
