//! Pipe graph of a network and shortest pipe-length distances (Dijkstra).
//!
//! As in the BattLeDIM scorer (`nodeTopologicalDistance.m`), only pipes are edges,
//! weighted by their length: the scorer fills a weighted adjacency matrix with
//! `getLinkLength`, which is 0 for pumps and valves, and MATLAB's `graph` drops zero
//! entries. Distances between two pipes follow `scoring_function.m`: 0 for the same
//! pipe, else the shortest node-to-node distance over the four pairs of their end nodes
//! plus half of each pipe's length.

use crate::inp::{InpNetwork, LinkKind};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NetworkError {
    #[error("unknown link {0:?}")]
    UnknownLink(String),
    #[error("unknown node {0:?}")]
    UnknownNode(String),
}

/// A link with its end nodes as indices into [`Network::node_ids`].
#[derive(Debug, Clone, PartialEq)]
pub struct GraphLink {
    pub id: String,
    pub kind: LinkKind,
    pub from: usize,
    pub to: usize,
    /// Pipe length (m); 0 for pumps and valves, as EPANET reports it.
    pub length: f64,
}

/// Topology of a network, built once from a parsed `.inp`.
#[derive(Debug, Clone)]
pub struct Network {
    node_ids: Vec<String>,
    node_index: HashMap<String, usize>,
    links: Vec<GraphLink>,
    link_index: HashMap<String, usize>,
    /// Pipe edges only: neighbour and length.
    adjacency: Vec<Vec<(usize, f64)>>,
}

impl Network {
    /// Builds the graph. [`crate::inp::parse_inp`] has already checked that links name
    /// defined nodes.
    pub fn from_inp(inp: &InpNetwork) -> Result<Network, NetworkError> {
        let node_ids: Vec<String> = inp.nodes.iter().map(|n| n.id.clone()).collect();
        let node_index: HashMap<String, usize> = node_ids.iter().enumerate().map(|(i, id)| (id.clone(), i)).collect();
        let mut adjacency = vec![Vec::new(); node_ids.len()];
        let mut links = Vec::with_capacity(inp.links.len());
        let mut link_index = HashMap::with_capacity(inp.links.len());
        for l in &inp.links {
            let from = *node_index.get(&l.from).ok_or_else(|| NetworkError::UnknownNode(l.from.clone()))?;
            let to = *node_index.get(&l.to).ok_or_else(|| NetworkError::UnknownNode(l.to.clone()))?;
            if l.kind == LinkKind::Pipe && l.length > 0.0 {
                adjacency[from].push((to, l.length));
                adjacency[to].push((from, l.length));
            }
            link_index.insert(l.id.clone(), links.len());
            links.push(GraphLink { id: l.id.clone(), kind: l.kind, from, to, length: l.length });
        }
        Ok(Network { node_ids, node_index, links, link_index, adjacency })
    }

    pub fn node_ids(&self) -> &[String] {
        &self.node_ids
    }
    pub fn node_index(&self, id: &str) -> Option<usize> {
        self.node_index.get(id).copied()
    }
    pub fn links(&self) -> &[GraphLink] {
        &self.links
    }
    pub fn link(&self, id: &str) -> Option<&GraphLink> {
        self.link_index.get(id).map(|&i| &self.links[i])
    }

    /// Shortest pipe-length distance (m) from `source` to every node, by index;
    /// `f64::INFINITY` where no pipe path exists.
    pub fn distances_from(&self, source: usize) -> Vec<f64> {
        let mut dist = vec![f64::INFINITY; self.node_ids.len()];
        let mut heap = BinaryHeap::new();
        dist[source] = 0.0;
        heap.push(Visit { dist: 0.0, node: source });
        while let Some(Visit { dist: d, node }) = heap.pop() {
            if d > dist[node] {
                continue;
            }
            for &(next, w) in &self.adjacency[node] {
                let nd = d + w;
                if nd < dist[next] {
                    dist[next] = nd;
                    heap.push(Visit { dist: nd, node: next });
                }
            }
        }
        dist
    }

    /// Shortest pipe-length distance (m) between two nodes by id.
    pub fn node_distance(&self, a: &str, b: &str) -> Result<f64, NetworkError> {
        let ia = self.node_index(a).ok_or_else(|| NetworkError::UnknownNode(a.to_string()))?;
        let ib = self.node_index(b).ok_or_else(|| NetworkError::UnknownNode(b.to_string()))?;
        Ok(self.distances_from(ia)[ib])
    }

    /// Distances from one link's two end nodes, to measure link-to-link distances from it
    /// many times (two Dijkstra runs, then O(1) per query).
    pub fn from_link(&self, id: &str) -> Result<LinkDistances<'_>, NetworkError> {
        let &index = self.link_index.get(id).ok_or_else(|| NetworkError::UnknownLink(id.to_string()))?;
        let link = &self.links[index];
        Ok(LinkDistances {
            network: self,
            index,
            from_start: self.distances_from(link.from),
            from_end: self.distances_from(link.to),
        })
    }

    /// Distance (m) between two links by the scorer's rule (see the module doc).
    pub fn link_distance(&self, a: &str, b: &str) -> Result<f64, NetworkError> {
        self.from_link(a)?.to(b)
    }
}

/// Distances from one link to others, see [`Network::from_link`].
#[derive(Debug, Clone)]
pub struct LinkDistances<'a> {
    network: &'a Network,
    index: usize,
    from_start: Vec<f64>,
    from_end: Vec<f64>,
}

impl LinkDistances<'_> {
    /// Distance (m) from this link to link `other`: 0 if it is the same link, else the
    /// shortest of the four end-node distances plus half of both lengths.
    pub fn to(&self, other: &str) -> Result<f64, NetworkError> {
        let &j = self.network.link_index.get(other).ok_or_else(|| NetworkError::UnknownLink(other.to_string()))?;
        if j == self.index {
            return Ok(0.0);
        }
        let this = &self.network.links[self.index];
        let that = &self.network.links[j];
        let nearest = self.from_start[that.from]
            .min(self.from_start[that.to])
            .min(self.from_end[that.from])
            .min(self.from_end[that.to]);
        Ok(nearest + this.length / 2.0 + that.length / 2.0)
    }
}

#[derive(PartialEq)]
struct Visit {
    dist: f64,
    node: usize,
}
impl Eq for Visit {}
impl Ord for Visit {
    // Min-heap on distance; distances are finite sums of positive lengths.
    fn cmp(&self, other: &Self) -> Ordering {
        other.dist.total_cmp(&self.dist).then_with(|| other.node.cmp(&self.node))
    }
}
impl PartialOrd for Visit {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
