// Bounds for the statistical tests, derived here rather than pasted: each check states the chance that
// a correct policy fails it, computed exactly for the model the test's conditions make true
// (independent connects with known probabilities: a multinomial), not from an approximation.

/** The false-failure rate a whole run of the suite is held to. */
export const FALSE_FAILURE = 1e-6;
/**
 * What each statistical check may spend of it: the suite has 17 (route-distribution's six spreads,
 * route-connect's busy backend, lb-spread's ten priority, ejection and locality splits; the other
 * bounds are deterministic or far below this), so a run stays under 1e-6.
 */
export const PER_CHECK = FALSE_FAILURE / 20;

/** Pearson's statistic: sum of (observed - expected)^2 / expected. */
export function chiSquare(observed: readonly number[], expected: readonly number[]): number {
  return observed.reduce((sum, o, i) => sum + (o - expected[i]!) ** 2 / expected[i]!, 0);
}

/** ln Γ(df/2) for a whole number of degrees of freedom: Γ(1/2) = √π, Γ(1) = 1, Γ(a + 1) = aΓ(a). */
function lnGammaHalf(df: number): number {
  let a = df % 2 === 0 ? 1 : 0.5;
  let ln = df % 2 === 0 ? 0 : 0.5 * Math.log(Math.PI);
  for (; a < df / 2; a++) ln += Math.log(a);
  return ln;
}

/**
 * P(X >= x) for X chi-square with df degrees of freedom: Q(df/2, x/2), the regularized upper
 * incomplete gamma, by its continued fraction (modified Lentz), which converges for x/2 > df/2 + 1,
 * the tail region these bounds live in.
 */
export function chiSquareUpperTail(x: number, df: number): number {
  const a = df / 2;
  const z = x / 2;
  if (!(z > a + 1)) throw new Error(`chiSquareUpperTail(${x}, ${df}): only the tail (x > df + 2)`);
  const tiny = 1e-300;
  let b = z + 1 - a;
  let c = 1 / tiny;
  let d = 1 / b;
  let h = d;
  for (let i = 1; i < 1000; i++) {
    const an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (Math.abs(d) < tiny) d = tiny;
    c = b + an / c;
    if (Math.abs(c) < tiny) c = tiny;
    d = 1 / d;
    const delta = d * c;
    h *= delta;
    if (Math.abs(delta - 1) < 1e-15) break;
  }
  return Math.exp(-z + a * Math.log(z) - lnGammaHalf(df)) * h;
}

/** The x with P(X >= x) = p for chi-square with df degrees of freedom (bisection on the tail). */
export function chiSquareQuantile(p: number, df: number): number {
  let lo = df + 2.000001;
  let hi = lo;
  while (chiSquareUpperTail(hi, df) > p) hi *= 2;
  for (let i = 0; i < 200 && hi - lo > 1e-12 * hi; i++) {
    const mid = (lo + hi) / 2;
    if (chiSquareUpperTail(mid, df) > p) lo = mid;
    else hi = mid;
  }
  return (lo + hi) / 2;
}

function logFactorials(n: number): Float64Array {
  const lf = new Float64Array(n + 1);
  for (let i = 2; i <= n; i++) lf[i] = lf[i - 1]! + Math.log(i);
  return lf;
}

export interface ChiSquareBound {
  /** Fail when the statistic exceeds this. */
  critical: number;
  /** P(statistic > critical) for the multinomial itself: the test's false-failure rate. */
  rate: number;
  /** The chi-square distribution's value at the same p, for comparison (df = categories - 1). */
  asymptotic: number;
}

/**
 * The smallest critical value c with P(chi-square statistic > c) <= alpha when the counts are
 * Multinomial(n, probs), computed exactly by summing the probability of every outcome with a
 * statistic up to a cap (2 or 3 categories), rather than from the chi-square approximation, whose
 * tail at 1e-6 is off by a factor that depends on n and the probabilities.
 */
export function chiSquareBound(n: number, probs: readonly number[], alpha = PER_CHECK): ChiSquareBound {
  const k = probs.length;
  if (k < 2 || k > 3) throw new Error('chiSquareBound: 2 or 3 categories');
  if (Math.abs(probs.reduce((a, b) => a + b, 0) - 1) > 1e-12) throw new Error('probabilities must sum to 1');
  const asymptotic = chiSquareQuantile(alpha, k - 1);
  const lf = logFactorials(n);
  const lp = probs.map((p) => Math.log(p));
  const e = probs.map((p) => n * p);
  for (let cap = 2 * asymptotic + 10; ; cap *= 2) {
    // every outcome with statistic <= cap has |x_i - e_i| <= sqrt(cap * e_i) in each category
    const range = (i: number): [number, number] => {
      const r = Math.sqrt(cap * e[i]!);
      return [Math.max(0, Math.ceil(e[i]! - r)), Math.min(n, Math.floor(e[i]! + r))];
    };
    const outcomes: [stat: number, p: number][] = [];
    const add = (x: number[]): void => {
      const stat = chiSquare(x, e);
      if (stat > cap) return;
      let lp0 = lf[n]!;
      for (let i = 0; i < k; i++) lp0 += x[i]! * lp[i]! - lf[x[i]!]!;
      outcomes.push([stat, Math.exp(lp0)]);
    };
    const [a0, a1] = range(0);
    for (let a = a0; a <= a1; a++) {
      if (k === 2) add([a, n - a]);
      else {
        const [b0, b1] = range(1);
        for (let b = b0; b <= b1 && a + b <= n; b++) add([a, b, n - a - b]);
      }
    }
    outcomes.sort((x, y) => x[0] - y[0]);
    // mass inside the cap, accumulated outward; the rest (1 - inside) is the tail beyond each value
    let inside = 0;
    for (let i = 0; i < outcomes.length; i++) {
      inside += outcomes[i]![1];
      const last = i + 1 === outcomes.length || outcomes[i + 1]![0] > outcomes[i]![0] + 1e-9;
      if (last && 1 - inside <= alpha)
        return { critical: outcomes[i]![0], rate: Math.max(0, 1 - inside), asymptotic };
    }
  }
}

export interface CountBound {
  /** Accept counts in [low, high]. */
  low: number;
  high: number;
  /** P(count outside [low, high]) for Binomial(n, p): the test's false-failure rate. */
  rate: number;
}

/** Binomial(n, p) probabilities of 0..n, from logs (no underflow of (1 - p)^n for large n). */
export function binomialPmf(n: number, p: number): Float64Array {
  const lf = logFactorials(n);
  const out = new Float64Array(n + 1);
  for (let x = 0; x <= n; x++) {
    const l = lf[n]! - lf[x]! - lf[n - x]!;
    out[x] = Math.exp(l + (x ? x * Math.log(p) : 0) + (n - x ? (n - x) * Math.log1p(-p) : 0));
  }
  return out;
}

/**
 * The widest-tailed interval whose two tails of Binomial(n, p) each hold at most alpha/2: the exact
 * acceptance region for one count (a backend's share of n independent connects).
 */
export function binomialBound(n: number, p: number, alpha = PER_CHECK): CountBound {
  const pmf = binomialPmf(n, p);
  let low = 0;
  let below = 0;
  while (low < n && below + pmf[low]! <= alpha / 2) below += pmf[low++]!;
  let high = n;
  let above = 0;
  while (high > 0 && above + pmf[high]! <= alpha / 2) above += pmf[high--]!;
  return { low, high, rate: below + above };
}

/** P(count >= k) for Binomial(n, p), summed from the pmf (no 1 - cdf cancellation). */
export function binomialUpperTail(n: number, p: number, k: number): number {
  const pmf = binomialPmf(n, p);
  let s = 0;
  for (let x = Math.max(0, k); x <= n; x++) s += pmf[x]!;
  return s;
}

/** The smallest k with P(count >= k) <= alpha for Binomial(n, p): a one-sided upper bound. */
export function binomialUpperBound(n: number, p: number, alpha = PER_CHECK): { bound: number; rate: number } {
  const pmf = binomialPmf(n, p);
  let k = n + 1;
  let tail = 0;
  while (k > 0 && tail + pmf[k - 1]! <= alpha) tail += pmf[--k]!;
  return { bound: k, rate: tail };
}
