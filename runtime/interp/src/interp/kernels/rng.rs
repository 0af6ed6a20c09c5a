//! [`Rng`]: the seeded random source of the random ops (numpy's legacy
//! Mersenne Twister), which [`Ctx::rng`](super::ctx::Ctx::rng) seeds per
//! node.

/// MT19937 seeded as numpy's legacy `np.random.seed(int)`, with numpy's
/// 53-bit `random_sample` doubles and polar-method Gaussians, so seeded
/// random ops reproduce ONNX's reference outputs.
pub struct Rng {
    state: [u32; 624],
    pos: usize,
    gauss: Option<f64>,
}

impl Rng {
    pub fn new(seed: u32) -> Rng {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Rng {
            state,
            pos: 624,
            gauss: None,
        }
    }

    fn twist(&mut self) {
        for i in 0..624 {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
            let mut v = self.state[(i + 397) % 624] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= 0x9908_b0df;
            }
            self.state[i] = v;
        }
        self.pos = 0;
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.pos >= 624 {
            self.twist();
        }
        let mut y = self.state[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// Uniform in [0, 1), as numpy's `random_sample`.
    pub fn uniform(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    /// Standard normal, as numpy's legacy `standard_normal` (polar method,
    /// second value of each pair cached).
    pub fn normal(&mut self) -> f64 {
        if let Some(g) = self.gauss.take() {
            return g;
        }
        loop {
            let x1 = 2.0 * self.uniform() - 1.0;
            let x2 = 2.0 * self.uniform() - 1.0;
            let r2 = x1 * x1 + x2 * x2;
            if r2 < 1.0 && r2 != 0.0 {
                let f = (-2.0 * r2.ln() / r2).sqrt();
                self.gauss = Some(f * x1);
                return f * x2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_source_matches_numpy() {
        // np.random.seed(0); np.random.uniform(0, 1, 3)
        let mut mt = Rng::new(0);
        for want in [0.5488135039273248, 0.7151893663724195, 0.6027633760716439] {
            assert_eq!(mt.uniform(), want);
        }
        // np.random.seed(0); np.random.standard_normal(2)
        let mut g = Rng::new(0);
        assert!((g.normal() - 1.764052345967664).abs() < 1e-12);
        assert!((g.normal() - 0.4001572083672233).abs() < 1e-12);
    }

    #[test]
    fn random_source_is_deterministic() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let xs: Vec<f64> = (0..4).map(|_| a.uniform()).collect();
        let ys: Vec<f64> = (0..4).map(|_| b.uniform()).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
    }
}
