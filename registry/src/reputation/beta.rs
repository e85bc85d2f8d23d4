//! The Beta distribution's quantile, for lower bounds: the regularised incomplete beta function
//! by continued fraction and ln Γ by Lanczos, in plain `f64` arithmetic so that every host
//! computes the same bits from the same evidence. The transcendental functions come from the
//! `libm` crate (musl's, in Rust), not the platform's C library, whose last bits differ
//! between glibc, macOS and Windows; `+ − × ÷` and `sqrt` are exact in IEEE 754 everywhere.

/// The `p` quantile of `Beta(a, b)`, by bisection on the regularised incomplete beta function.
pub(super) fn beta_quantile(p: f64, a: f64, b: f64) -> f64 {
    let (mut lo, mut hi) = (0.0, 1.0);
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if incomplete_beta(mid, a, b) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

/// The regularised incomplete beta function `I_x(a, b)` (continued fraction, Lentz's method).
fn incomplete_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front =
        libm::exp(ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * ln(x) + b * ln(1.0 - x));
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(x, a, b) / a
    } else {
        1.0 - front * beta_fraction(1.0 - x, b, a) / b
    }
}

fn beta_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut c = 1.0;
    let mut d = 1.0 - (a + b) * x / (a + 1.0);
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..300 {
        let m = f64::from(m);
        let even = m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m));
        for numerator in [
            even,
            -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0)),
        ] {
            d = 1.0 + numerator * d;
            if d.abs() < TINY {
                d = TINY;
            }
            c = 1.0 + numerator / c;
            if c.abs() < TINY {
                c = TINY;
            }
            d = 1.0 / d;
            h *= d * c;
        }
        if (d * c - 1.0).abs() < 1e-14 {
            break;
        }
    }
    h
}

/// ln Γ(x) for x > 0 (Lanczos approximation, g = 7).
fn ln_gamma(x: f64) -> f64 {
    const COEFFICIENTS: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return ln(std::f64::consts::PI)
            - ln(libm::sin(std::f64::consts::PI * x))
            - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let series = COEFFICIENTS[1..]
        .iter()
        .enumerate()
        .fold(COEFFICIENTS[0], |sum, (i, c)| {
            sum + c / (x + i as f64 + 1.0)
        });
    0.5 * ln(2.0 * std::f64::consts::PI) + (x + 0.5) * ln(t) - t + ln(series)
}

fn ln(x: f64) -> f64 {
    libm::log(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reputation::Reputation;

    #[test]
    fn the_beta_quantile_matches_known_values() {
        // Beta(1,1) is uniform: its 5% quantile is 0.05.
        assert!((beta_quantile(0.05, 1.0, 1.0) - 0.05).abs() < 1e-9);
        // Beta(2,1) has CDF x²: the 5% quantile is √0.05.
        assert!((beta_quantile(0.05, 2.0, 1.0) - 0.05_f64.sqrt()).abs() < 1e-9);
        // Beta(1,2) has CDF 1−(1−x)²: the 5% quantile is 1−√0.95.
        assert!((beta_quantile(0.05, 1.0, 2.0) - (1.0 - 0.95_f64.sqrt())).abs() < 1e-9);
        // More evidence at the same mean raises the bound.
        let few = Reputation {
            positive: 8.0,
            negative: 2.0,
            evidence: 10,
        };
        let many = Reputation {
            positive: 80.0,
            negative: 20.0,
            evidence: 100,
        };
        assert!(many.lower_bound() > few.lower_bound());
        assert!((few.quality() - 0.75).abs() < 1e-12);
        assert!((Reputation::NONE.uncertainty() - 1.0).abs() < 1e-12);
    }

    /// Hosts that hold the same evidence must agree on scores exactly, on any platform. These
    /// are the bits this code computes (x86-64 Linux, `libm` as locked); a change to the
    /// formulas, the iteration counts or the math library that moves a single bit fails here,
    /// and must be a deliberate, announced change of every host's scores.
    #[test]
    fn lower_bounds_and_decay_are_pinned_to_the_bit() {
        let bounds: Vec<u64> = [
            (1.0, 1.0),
            (201.0, 1.0),
            (8.0, 3.0),
            (37.5, 12.25),
            (0.3, 0.7),
        ]
        .iter()
        .map(|&(a, b)| beta_quantile(0.05, a, b).to_bits())
        .collect();
        assert_eq!(bounds, PINNED_BOUNDS, "{bounds:x?}");
        let day = 24 * 3_600_000;
        let params = crate::reputation::ScoreParams::new(vec![], 100 * day);
        let decays: Vec<u64> = [0, 1, day, 7 * day + 12_345, 99 * day]
            .iter()
            .map(|&t| crate::reputation::decay(t, &params).to_bits())
            .collect();
        assert_eq!(decays, PINNED_DECAYS, "{decays:x?}");
    }

    const PINNED_BOUNDS: [u64; 5] = [
        4587366580439587216,
        4607049169683699458,
        4602554496385060476,
        4604017699628318132,
        4545281051361287200,
    ];
    const PINNED_DECAYS: [u64; 5] = [
        4591813439449296444,
        4591813439451208220,
        4591980539842286398,
        4593068462473182090,
        4606976694084720087,
    ];

    #[test]
    fn ln_gamma_matches_factorials() {
        for (n, factorial) in [(1.0, 1.0_f64), (5.0, 24.0), (11.0, 3_628_800.0)] {
            assert!((ln_gamma(n) - factorial.ln()).abs() < 1e-10, "Γ({n})");
        }
    }
}
