//! The two-sample Kolmogorov–Smirnov test: the largest distance between two empirical
//! distribution functions, and how likely a distance at least that large is when both samples
//! come from the same distribution (the asymptotic Kolmogorov distribution, with the effective
//! sample size correction of Stephens, as in Numerical Recipes' `kstwo`).

/// The statistic D of samples `a` and `b` (each sorted in place), in [0, 1]; 0 when either is
/// empty.
pub fn statistic(a: &mut [f64], b: &mut [f64]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (n, m) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut d) = (0, 0, 0.0f64);
    while i < a.len() && j < b.len() {
        // Step past every copy of the smaller value on both sides, so ties move together.
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / n - j as f64 / m).abs());
    }
    d
}

/// The probability of a statistic at least `d` between samples of sizes `n` and `m` drawn from
/// one distribution.
pub fn p_value(d: f64, n: usize, m: usize) -> f64 {
    if n == 0 || m == 0 {
        return 1.0;
    }
    let en = ((n * m) as f64 / (n + m) as f64).sqrt();
    let lambda = (en + 0.12 + 0.11 / en) * d;
    kolmogorov_q(lambda)
}

/// Q_KS(λ) = 2 Σ (−1)^(k−1) exp(−2 k² λ²).
fn kolmogorov_q(lambda: f64) -> f64 {
    if lambda < 0.2 {
        return 1.0;
    }
    let a2 = -2.0 * lambda * lambda;
    let (mut sum, mut sign, mut previous) = (0.0, 2.0, 0.0f64);
    for k in 1..=100 {
        let term = sign * (a2 * (k * k) as f64).exp();
        sum += term;
        if term.abs() <= 1e-3 * previous || term.abs() <= 1e-8 * sum {
            return sum.clamp(0.0, 1.0);
        }
        sign = -sign;
        previous = term.abs();
    }
    1.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn the_statistic_by_hand() {
        assert_eq!(statistic(&mut [1.0, 2.0, 3.0], &mut [1.0, 2.0, 3.0]), 0.0);
        assert_eq!(statistic(&mut [1.0, 2.0], &mut [3.0, 4.0]), 1.0);
        // F_a steps at 1, 2, 3, 4; F_b at 2.5 and 5: at 2, 0.5 − 0 = 0.5 is the largest gap.
        assert_eq!(statistic(&mut [4.0, 1.0, 3.0, 2.0], &mut [5.0, 2.5]), 0.5);
        assert_eq!(statistic(&mut [], &mut [1.0]), 0.0);
    }

    #[test]
    fn same_distribution_small_shifted_large() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut draw = |shift: f64, n: usize| -> Vec<f64> {
            (0..n).map(|_| rng.random::<f64>() + shift).collect()
        };
        let (mut a, mut b) = (draw(0.0, 500), draw(0.0, 500));
        let same = statistic(&mut a, &mut b);
        assert!(same < 0.1, "{same}");
        assert!(p_value(same, 500, 500) > 0.05);
        let mut c = draw(0.3, 500);
        let shifted = statistic(&mut a, &mut c);
        assert!(shifted > 0.25, "{shifted}");
        assert!(p_value(shifted, 500, 500) < 1e-6);
        // Known value: D = 0.1 with 500 and 500 gives p ≈ 0.012.
        assert!(
            (p_value(0.1, 500, 500) - 0.012).abs() < 0.003,
            "{}",
            p_value(0.1, 500, 500)
        );
    }
}
