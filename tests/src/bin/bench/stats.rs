//! Order statistics over the rounds of an alternated run.

/// Median, quartiles and extremes of a sample.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub q1: f64,
    pub q3: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Summary::default();
        }
        v.sort_by(f64::total_cmp);
        Summary {
            n: v.len(),
            median: quantile(&v, 0.5),
            q1: quantile(&v, 0.25),
            q3: quantile(&v, 0.75),
            min: v[0],
            max: v[v.len() - 1],
        }
    }

    pub fn iqr(&self) -> f64 {
        self.q3 - self.q1
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "n": self.n, "median": self.median, "q1": self.q1, "q3": self.q3,
            "iqr": self.iqr(), "min": self.min, "max": self.max,
        })
    }
}

/// Linear interpolation between closest ranks of a sorted sample.
fn quantile(sorted: &[f64], p: f64) -> f64 {
    let pos = (sorted.len() - 1) as f64 * p;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// A deterministic generator (splitmix64 from `seed`), for samples that
/// must be the same in every run.
pub fn splitmix(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Median and quartiles of a small sample match the textbook values.
    #[test]
    fn quartiles() {
        let s = Summary::of(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!(
            (s.median, s.q1, s.q3, s.min, s.max),
            (3.0, 2.0, 4.0, 1.0, 5.0)
        );
        assert_eq!(Summary::of(&[]).n, 0);
    }
}
