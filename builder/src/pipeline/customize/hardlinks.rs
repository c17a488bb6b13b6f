//! Hard links in a tree written in path order: the first member of each
//! group holds the data, the others link to it.

use std::collections::BTreeMap;

use super::tree::{Kind, Node, Tree};

/// A set of paths sharing one inode, with the data they share.
#[derive(Debug, Clone)]
pub(super) struct LinkGroup {
    members: Vec<String>,
    data: Node,
}

/// Rewrites hard links so the first member of each group in path order holds
/// the data and the others link to it: a tar extractor (mke2fs -d) needs the
/// target before the link, and the output is in path order, not mmdebstrap's.
pub(super) fn group_hardlinks(tree: &mut Tree) -> Vec<LinkGroup> {
    let mut by_target: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (path, node) in tree.iter() {
        if let Kind::HardLink(target) = &node.kind {
            by_target.entry(target.clone()).or_default().push(path.clone());
        }
    }
    let mut groups = Vec::new();
    for (target, links) in by_target {
        let Some(data) = tree.get(&target).filter(|n| matches!(n.kind, Kind::File(_))).cloned() else {
            continue;
        };
        let mut members = links;
        members.push(target);
        members.sort();
        let first = members[0].clone();
        for m in &members {
            let node = if *m == first {
                data.clone()
            } else {
                Node {
                    kind: Kind::HardLink(first.clone()),
                    ..data.clone()
                }
            };
            tree.insert(m.clone(), node);
        }
        groups.push(LinkGroup { members, data });
    }
    groups
}

/// After changes: a link whose first member was removed or replaced becomes a
/// plain copy of the data it had.
pub(super) fn repair_hardlinks(tree: &mut Tree, groups: &[LinkGroup]) {
    for g in groups {
        let first = &g.members[0];
        let intact = tree.get(first).is_some_and(|n| n.from_rootfs && matches!(n.kind, Kind::File(_)));
        if intact {
            continue;
        }
        for m in &g.members[1..] {
            if let Some(node) = tree.get_mut(m) {
                if matches!(&node.kind, Kind::HardLink(t) if t == first) {
                    *node = g.data.clone();
                }
            }
        }
    }
}
