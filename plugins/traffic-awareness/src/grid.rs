//! A uniform spatial hash of asset slots, so a fix is compared only with
//! assets that could reach it within the horizon, not with the whole site.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

pub type Cell = (i32, i32);

/// A multiplicative hash for small integer keys (grid cells, slot pairs).
/// The keys are not attacker-chosen (slots are ours, cells are bounded by
/// the site radius), so SipHash's flooding resistance buys nothing and
/// costs most of a pair check.
#[derive(Default)]
pub struct IntHasher(u64);

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
    fn write_i32(&mut self, v: i32) {
        self.write_u64(u64::from(v as u32));
    }
    fn write_u64(&mut self, v: u64) {
        // Fibonacci hashing, folded so the high bits reach the bucket index.
        let h = (self.0.rotate_left(5) ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 32);
    }
}

pub type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

#[derive(Debug)]
pub struct Grid {
    cell_m: f64,
    cells: IntMap<Cell, Vec<u32>>,
}

impl Grid {
    pub fn new(cell_m: f64) -> Grid {
        Grid { cell_m, cells: IntMap::default() }
    }

    pub fn cell_m(&self) -> f64 {
        self.cell_m
    }

    pub fn cell_of(&self, x: f64, y: f64) -> Cell {
        // Positions are bounded by max_site_radius_m, far inside i32 cells.
        ((x / self.cell_m).floor() as i32, (y / self.cell_m).floor() as i32)
    }

    pub fn insert(&mut self, cell: Cell, slot: u32) {
        self.cells.entry(cell).or_default().push(slot);
    }

    pub fn remove(&mut self, cell: Cell, slot: u32) {
        if let Some(v) = self.cells.get_mut(&cell) {
            if let Some(i) = v.iter().position(|&s| s == slot) {
                v.swap_remove(i);
            }
            if v.is_empty() {
                self.cells.remove(&cell);
            }
        }
    }

    /// Appends to `out` every slot in a cell touching the square of half-side
    /// `radius` around (x, y).
    pub fn query(&self, x: f64, y: f64, radius: f64, out: &mut Vec<u32>) {
        let (lo, hi) = (self.cell_of(x - radius, y - radius), self.cell_of(x + radius, y + radius));
        let span = (i64::from(hi.0) - i64::from(lo.0) + 1) * (i64::from(hi.1) - i64::from(lo.1) + 1);
        if span > self.cells.len() as i64 {
            // Fewer occupied cells than cells in range: scan the occupied ones.
            for (c, v) in &self.cells {
                if (lo.0..=hi.0).contains(&c.0) && (lo.1..=hi.1).contains(&c.1) {
                    out.extend_from_slice(v);
                }
            }
            return;
        }
        for cx in lo.0..=hi.0 {
            for cy in lo.1..=hi.1 {
                if let Some(v) = self.cells.get(&(cx, cy)) {
                    out.extend_from_slice(v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_neighbours_only() {
        let mut g = Grid::new(10.0);
        g.insert(g.cell_of(1.0, 1.0), 1);
        g.insert(g.cell_of(-5.0, 12.0), 2);
        g.insert(g.cell_of(500.0, 0.0), 3);
        let mut out = Vec::new();
        g.query(0.0, 0.0, 15.0, &mut out);
        out.sort_unstable();
        assert_eq!(out, vec![1, 2]);
        out.clear();
        g.query(0.0, 0.0, 1e6, &mut out);
        assert_eq!(out.len(), 3);
        g.remove(g.cell_of(1.0, 1.0), 1);
        out.clear();
        g.query(0.0, 0.0, 15.0, &mut out);
        assert_eq!(out, vec![2]);
    }
}
