//! How close a compressed model's outputs are to the original's, and the
//! tolerances that decide whether they are close enough.
//!
//! Every metric accumulates over all evaluation sets (sums, not a mean of
//! per-set figures), so one streaming pass computes it.

use serde::Serialize;

/// One output's agreement with the original model, over the eval sets.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OutputMetrics {
    pub name: String,
    /// Cosine similarity of the flattened outputs (1: same direction).
    pub cosine: f64,
    /// Largest absolute difference.
    pub max_abs: f64,
    /// Signal to quantization noise: 10·log10(Σ ref² / Σ (ref − got)²);
    /// `null` when the outputs are identical.
    pub sqnr_db: Option<f64>,
    /// Fraction of rows (along the last axis) whose arg-max agrees.
    pub top1_agreement: f64,
}

/// Sums behind [`OutputMetrics`].
#[derive(Clone, Debug, Default)]
pub struct Agreement {
    dot: f64,
    ref2: f64,
    got2: f64,
    err2: f64,
    max_abs: f64,
    rows: u64,
    agree: u64,
    /// Elements that are NaN/inf in one and not the other.
    mismatched_non_finite: u64,
}

impl Agreement {
    /// Add one set's values; `row` is the length of the last axis.
    pub fn add(&mut self, reference: &[f32], got: &[f32], row: usize) {
        for (&r, &g) in reference.iter().zip(got) {
            if !(r.is_finite() && g.is_finite()) {
                if r.is_finite() != g.is_finite() {
                    self.mismatched_non_finite += 1;
                }
                continue;
            }
            let (r, g) = (r as f64, g as f64);
            self.dot += r * g;
            self.ref2 += r * r;
            self.got2 += g * g;
            self.err2 += (r - g) * (r - g);
            self.max_abs = self.max_abs.max((r - g).abs());
        }
        if row > 0 {
            for (a, b) in reference.chunks(row).zip(got.chunks(row)) {
                self.rows += 1;
                self.agree += (argmax(a) == argmax(b)) as u64;
            }
        }
    }

    pub fn finish(&self, name: &str) -> OutputMetrics {
        // Identical outputs are exactly aligned (not 1 - an ulp).
        let cosine = if self.err2 == 0.0 || (self.ref2 == 0.0 && self.got2 == 0.0) {
            1.0
        } else if self.ref2 == 0.0 || self.got2 == 0.0 {
            0.0
        } else {
            self.dot / (self.ref2.sqrt() * self.got2.sqrt())
        };
        let bad = self.mismatched_non_finite > 0;
        OutputMetrics {
            name: name.to_string(),
            cosine: if bad { 0.0 } else { cosine.min(1.0) },
            max_abs: if bad { f64::INFINITY } else { self.max_abs },
            sqnr_db: sqnr_db(self.ref2, self.err2),
            top1_agreement: if self.rows == 0 {
                1.0
            } else {
                self.agree as f64 / self.rows as f64
            },
        }
    }
}

/// The outputs' figures as a table for a terminal (SQNR "exact" where
/// there is no noise).
pub fn outputs_table(outputs: &[OutputMetrics]) -> String {
    use std::fmt::Write;
    let mut s =
        String::from("output                          cosine     max_abs   sqnr_db  top1\n");
    for o in outputs {
        let sqnr = o.sqnr_db.map_or("exact".to_string(), |v| format!("{v:.1}"));
        let _ = writeln!(
            s,
            "{:<30} {:>8.5} {:>11.4e} {:>9} {:>5.3}",
            o.name, o.cosine, o.max_abs, sqnr, o.top1_agreement
        );
    }
    s
}

/// 10·log10(signal / noise), floored at [`SQNR_FLOOR_DB`]; `None` when
/// there is no noise (JSON has no infinity).
pub fn sqnr_db(signal: f64, noise: f64) -> Option<f64> {
    if noise <= 0.0 {
        None
    } else if signal <= 0.0 {
        Some(SQNR_FLOOR_DB)
    } else {
        Some((10.0 * (signal / noise).log10()).max(SQNR_FLOOR_DB))
    }
}

/// The SQNR of noise without signal: far below any meaningful figure.
pub const SQNR_FLOOR_DB: f64 = -300.0;

fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// A metric a tolerance is stated in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Metric {
    #[serde(rename = "cosine")]
    Cosine,
    #[serde(rename = "top1")]
    Top1,
    #[serde(rename = "max-abs")]
    MaxAbs,
    #[serde(rename = "sqnr-db")]
    SqnrDb,
}

impl Metric {
    pub const ALL: [(&'static str, Metric); 4] = [
        ("cosine", Metric::Cosine),
        ("top1", Metric::Top1),
        ("max-abs", Metric::MaxAbs),
        ("sqnr-db", Metric::SqnrDb),
    ];

    pub fn name(self) -> &'static str {
        Metric::ALL
            .iter()
            .find(|(_, m)| *m == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    /// The metric's value for one output, oriented so that larger is
    /// better (max-abs is negated; identical outputs have infinite SQNR).
    pub fn score(self, o: &OutputMetrics) -> f64 {
        match self {
            Metric::Cosine => o.cosine,
            Metric::Top1 => o.top1_agreement,
            Metric::MaxAbs => -o.max_abs,
            Metric::SqnrDb => o.sqnr_db.unwrap_or(f64::INFINITY),
        }
    }
}

/// `METRIC=VALUE`: every output must reach VALUE (at least, for cosine,
/// top1 and sqnr-db; at most, for max-abs).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Tolerance {
    pub metric: Metric,
    pub value: f64,
}

impl std::str::FromStr for Tolerance {
    type Err = String;
    fn from_str(s: &str) -> Result<Tolerance, String> {
        let names: Vec<&str> = Metric::ALL.iter().map(|(n, _)| *n).collect();
        let (m, v) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}`: expected METRIC=VALUE ({})", names.join(", ")))?;
        let metric = Metric::ALL
            .iter()
            .find(|(n, _)| *n == m.trim())
            .map(|(_, m)| *m)
            .ok_or_else(|| format!("unknown metric `{m}`; metrics: {}", names.join(", ")))?;
        let value: f64 = v
            .trim()
            .parse()
            .map_err(|_| format!("`{v}` is not a number"))?;
        if !value.is_finite() {
            return Err(format!("`{v}` is not a finite number"));
        }
        Ok(Tolerance { metric, value })
    }
}

impl Tolerance {
    /// Larger is better, as [`Metric::score`].
    pub fn threshold(self) -> f64 {
        match self.metric {
            Metric::MaxAbs => -self.value,
            _ => self.value,
        }
    }

    pub fn holds(self, outputs: &[OutputMetrics]) -> bool {
        outputs
            .iter()
            .all(|o| self.metric.score(o) >= self.threshold())
    }
}

/// The worst output's score under `metric` (larger is better).
pub fn worst(metric: Metric, outputs: &[OutputMetrics]) -> f64 {
    outputs
        .iter()
        .map(|o| metric.score(o))
        .fold(f64::INFINITY, f64::min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_of_known_vectors() {
        let mut a = Agreement::default();
        a.add(&[1.0, 0.0, 3.0, 2.0], &[1.0, 0.5, 3.0, 2.5], 2);
        let m = a.finish("y");
        assert_eq!(m.max_abs, 0.5);
        // Rows [1,0] vs [1,0.5] agree on 0; [3,2] vs [3,2.5] on 0.
        assert_eq!(m.top1_agreement, 1.0);
        let sq = 10.0 * (14.0f64 / 0.5).log10();
        assert!((m.sqnr_db.unwrap() - sq).abs() < 1e-9);
        assert!(m.cosine > 0.98 && m.cosine < 1.0);
        let same = {
            let mut a = Agreement::default();
            a.add(&[1.0, 2.0], &[1.0, 2.0], 2);
            a.finish("y")
        };
        assert_eq!((same.cosine, same.sqnr_db), (1.0, None));
        assert!(Metric::SqnrDb.score(&same).is_infinite());
        let nan = {
            let mut a = Agreement::default();
            a.add(&[1.0, 2.0], &[f32::NAN, 2.0], 2);
            a.finish("y")
        };
        assert_eq!(nan.cosine, 0.0);
    }

    #[test]
    fn tolerances_parse_and_orient() {
        let t: Tolerance = "cosine=0.999".parse().unwrap();
        assert_eq!(t.metric, Metric::Cosine);
        let m: Tolerance = "max-abs=0.1".parse().unwrap();
        let o = OutputMetrics {
            name: "y".into(),
            cosine: 0.9995,
            max_abs: 0.05,
            sqnr_db: Some(30.0),
            top1_agreement: 1.0,
        };
        assert!(t.holds(std::slice::from_ref(&o)) && m.holds(std::slice::from_ref(&o)));
        assert!(!"sqnr-db=31".parse::<Tolerance>().unwrap().holds(&[o]));
        assert!("cos=1"
            .parse::<Tolerance>()
            .unwrap_err()
            .contains("unknown metric"));
        assert!("cosine".parse::<Tolerance>().is_err());
        assert!("cosine=x".parse::<Tolerance>().is_err());
    }
}
