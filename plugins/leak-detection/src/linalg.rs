//! Small dense least squares (normal equations, ridge, Cholesky) for the calibration fits.

/// A linear model on standardised features: `y = b0 + Σ b_k (x_k - mu_k) / sd_k`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LinModel {
    pub mu: Vec<f64>,
    pub sd: Vec<f64>,
    pub beta: Vec<f64>,
    pub b0: f64,
    /// Residual standard deviation on the fitted rows.
    pub sigma: f64,
}

impl LinModel {
    pub fn predict(&self, x: &[f64]) -> f64 {
        let terms = self.beta.iter().zip(&self.mu).zip(&self.sd).zip(x);
        self.b0 + terms.map(|(((b, mu), sd), x)| b * (x - mu) / sd).sum::<f64>()
    }

    /// Coefficient of raw feature `k` (per unit of x_k).
    pub fn raw_coef(&self, k: usize) -> f64 {
        self.beta[k] / self.sd[k]
    }

    /// Ridge fit (`lambda` relative to the row count on standardised features); `None` when
    /// there are fewer rows than features or the system is singular.
    pub fn fit(rows: &[Vec<f64>], y: &[f64], lambda: f64) -> Option<LinModel> {
        let n = rows.len();
        let p = rows.first()?.len();
        if n < p + 2 || y.len() != n {
            return None;
        }
        let mut mu = vec![0.0; p];
        for r in rows {
            for k in 0..p {
                mu[k] += r[k] / n as f64;
            }
        }
        let mut sd = vec![0.0; p];
        for r in rows {
            for k in 0..p {
                sd[k] += (r[k] - mu[k]).powi(2) / n as f64;
            }
        }
        // A constant feature gets sd 1 and a zero column: the ridge keeps it at 0.
        let sd: Vec<f64> = sd.iter().map(|v| if v.sqrt() > 1e-12 { v.sqrt() } else { 1.0 }).collect();
        let ym = y.iter().sum::<f64>() / n as f64;
        let mut a = vec![0.0; p * p];
        let mut b = vec![0.0; p];
        let mut z = vec![0.0; p];
        for (r, &yi) in rows.iter().zip(y) {
            for k in 0..p {
                z[k] = (r[k] - mu[k]) / sd[k];
            }
            for i in 0..p {
                b[i] += z[i] * (yi - ym);
                for j in 0..=i {
                    a[i * p + j] += z[i] * z[j];
                }
            }
        }
        for i in 0..p {
            a[i * p + i] += lambda * n as f64;
            for j in 0..i {
                a[j * p + i] = a[i * p + j];
            }
        }
        let beta = cholesky_solve(&mut a, &b, p)?;
        let mut m = LinModel { mu, sd, beta, b0: ym, sigma: 0.0 };
        let ss: f64 = rows.iter().zip(y).map(|(r, &yi)| (yi - m.predict(r)).powi(2)).sum();
        m.sigma = (ss / (n - p).max(1) as f64).sqrt();
        Some(m)
    }
}

fn cholesky_solve(a: &mut [f64], b: &[f64], p: usize) -> Option<Vec<f64>> {
    if !cholesky(a, p) {
        return None;
    }
    let mut x = forward_solve(a, p, b);
    for i in (0..p).rev() {
        for k in i + 1..p {
            x[i] -= a[k * p + i] * x[k];
        }
        x[i] /= a[i * p + i];
    }
    Some(x)
}

/// In-place lower Cholesky factor of the symmetric `p × p` matrix `a` (row-major, lower
/// triangle read); false when it is not positive definite.
pub fn cholesky(a: &mut [f64], p: usize) -> bool {
    for j in 0..p {
        let mut d = a[j * p + j];
        for k in 0..j {
            d -= a[j * p + k] * a[j * p + k];
        }
        if d <= 1e-12 || !d.is_finite() {
            return false;
        }
        let d = d.sqrt();
        a[j * p + j] = d;
        for i in j + 1..p {
            let mut s = a[i * p + j];
            for k in 0..j {
                s -= a[i * p + k] * a[j * p + k];
            }
            a[i * p + j] = s / d;
        }
    }
    true
}

/// `L⁻¹ b` for the lower factor `l` from [`cholesky`].
pub fn forward_solve(l: &[f64], p: usize, b: &[f64]) -> Vec<f64> {
    let mut x = b.to_vec();
    for i in 0..p {
        for k in 0..i {
            x[i] -= l[i * p + k] * x[k];
        }
        x[i] /= l[i * p + i];
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_an_exact_plane() {
        let rows: Vec<Vec<f64>> = (0..50).map(|i| vec![i as f64, ((i * 7) % 11) as f64]).collect();
        let y: Vec<f64> = rows.iter().map(|r| 3.0 + 2.0 * r[0] - 0.5 * r[1]).collect();
        let m = LinModel::fit(&rows, &y, 0.0).unwrap();
        assert!((m.raw_coef(0) - 2.0).abs() < 1e-9 && (m.raw_coef(1) + 0.5).abs() < 1e-9);
        assert!((m.predict(&[10.0, 4.0]) - 21.0).abs() < 1e-9);
    }
}
