//! Shortest pipe-length distances on a hand-written network with known answers, and on
//! L-TOWN against values computed independently with networkx.

use outpost_eval::inp::{parse_inp, read_inp};
use outpost_eval::network::{Network, NetworkError};
use std::path::PathBuf;

/// A (100) B (50) C (30) D, plus a longer direct pipe A–C (200), a reservoir R–A (5), a
/// separate pipe E–F (10); a pump D→E and a valve B–D that must not count as edges.
const TINY: &str = "\
[JUNCTIONS]
 A 0
 B 0
 C 0
 D 0
 E 0
 F 0
[RESERVOIRS]
 R 100
[PIPES]
 pAB A B 100 100 120
 pBC B C 50 100 120
 pAC A C 200 100 120 ; longer than A-B-C
 pCD C D 30 100 120
 pEF E F 10 100 120
 pRA R A 5 100 120
[PUMPS]
 pu D E HEAD 1
[VALVES]
 v1 B D 100 PRV 30 0
";

fn tiny() -> Network {
    Network::from_inp(&parse_inp(TINY, "tiny.inp").unwrap()).unwrap()
}

#[test]
fn node_distances_take_the_shortest_pipe_path() {
    let n = tiny();
    // By hand: A→C via B is 150 (< 200 direct); A→D 180; R→D 185.
    assert_eq!(n.node_distance("A", "C").unwrap(), 150.0);
    assert_eq!(n.node_distance("C", "A").unwrap(), 150.0);
    assert_eq!(n.node_distance("A", "D").unwrap(), 180.0);
    assert_eq!(n.node_distance("R", "D").unwrap(), 185.0);
    assert_eq!(n.node_distance("A", "A").unwrap(), 0.0);
    // The valve B–D is not an edge: B→D goes through C (50 + 30), not 0.
    assert_eq!(n.node_distance("B", "D").unwrap(), 80.0);
    // The pump D→E is not an edge: E and F are cut off from the rest.
    assert_eq!(n.node_distance("D", "E").unwrap(), f64::INFINITY);
    assert_eq!(n.node_distance("E", "F").unwrap(), 10.0);
    assert_eq!(n.node_distance("A", "X"), Err(NetworkError::UnknownNode("X".into())));
}

#[test]
fn pipe_distances_follow_the_scorer_rule() {
    let n = tiny();
    // Same pipe: 0.
    assert_eq!(n.link_distance("pAB", "pAB").unwrap(), 0.0);
    // pAB–pCD: nearest end nodes B–C (50) + 100/2 + 30/2.
    assert_eq!(n.link_distance("pAB", "pCD").unwrap(), 115.0);
    assert_eq!(n.link_distance("pCD", "pAB").unwrap(), 115.0);
    // Pipes sharing node C: 0 + 200/2 + 50/2.
    assert_eq!(n.link_distance("pAC", "pBC").unwrap(), 125.0);
    // pRA–pCD: A–C 150 + 5/2 + 30/2.
    assert_eq!(n.link_distance("pRA", "pCD").unwrap(), 167.5);
    assert_eq!(n.link_distance("pRA", "pEF").unwrap(), f64::INFINITY);
    // A valve as the detected link: length 0, its ends B and D; from pAB: B is an end, 0 + 50.
    assert_eq!(n.link_distance("pAB", "v1").unwrap(), 50.0);
    assert_eq!(n.link_distance("pAB", "nope"), Err(NetworkError::UnknownLink("nope".into())));
}

/// Reference values from networkx (`shortest_path_length(weight=length)` on a graph of the
/// pipes only, read with WNTR), run once when this test was written.
#[test]
fn ltown_distances_match_networkx() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/battledim/L-TOWN.inp");
    let inp = read_inp(&path).unwrap();
    assert_eq!(inp.nodes.len(), 785);
    assert_eq!(inp.links.len(), 909);
    assert_eq!(inp.pipes().count(), 905);
    assert_eq!(inp.coordinates.len(), 785);
    let n = Network::from_inp(&inp).unwrap();
    for (a, b, want) in
        [("n1", "n4", 851.3775), ("n54", "n740", 2329.1738), ("n105", "n229", 1889.4517), ("n332", "n769", 2891.8169)]
    {
        let got = n.node_distance(a, b).unwrap();
        assert!((got - want).abs() < 1e-6, "{a}-{b}: {got} vs {want}");
    }
    // Zones behind a PRV or the pump are not reachable by pipes.
    assert_eq!(n.node_distance("R1", "n1").unwrap(), f64::INFINITY);
    for (a, b, want) in [
        ("p632", "p653", 246.11705),
        ("p1", "p905", 213.8885),
        ("p257", "p280", 537.5867),
        ("p523", "p827", 2759.51015),
    ] {
        let got = n.link_distance(a, b).unwrap();
        assert!((got - want).abs() < 1e-6, "{a}-{b}: {got} vs {want}");
    }
}
