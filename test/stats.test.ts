// The statistics behind the distribution tests' bounds (test/support/stats.ts), checked against
// closed forms and published values, so the bounds those tests print are derived, not trusted.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  binomialBound,
  binomialPmf,
  binomialUpperBound,
  chiSquareBound,
  chiSquareQuantile,
  chiSquareUpperTail,
  PER_CHECK,
} from './support/stats.js';

const close = (a: number, b: number, rel: number, what: string): void =>
  assert.ok(Math.abs(a - b) <= rel * Math.abs(b), `${what}: ${a} vs ${b}`);

void describe('chi-square distribution', () => {
  void it('2 degrees of freedom: the tail is exp(-x/2), so the 1e-6 quantile is -2 ln 1e-6 = 27.631', () => {
    for (const x of [5, 10, 27.63, 40]) close(chiSquareUpperTail(x, 2), Math.exp(-x / 2), 1e-12, `Q2(${x})`);
    close(chiSquareQuantile(1e-6, 2), -2 * Math.log(1e-6), 1e-10, 'q2(1e-6)');
  });

  void it('1 and 3 degrees of freedom match published critical values', () => {
    // 23.9281 (df 1) and 30.6648 (df 3) at 1e-6; 10.8276 (df 1) at 0.001 (NIST/R qchisq)
    close(chiSquareQuantile(1e-6, 1), 23.92813, 1e-6, 'q1(1e-6)');
    close(chiSquareQuantile(1e-6, 3), 30.66485, 1e-6, 'q3(1e-6)');
    close(chiSquareQuantile(1e-3, 1), 10.82757, 1e-6, 'q1(1e-3)');
  });
});

void describe('exact multinomial bounds', () => {
  void it('hold their rate, are the smallest that do, and tend to chi-square for large n', () => {
    for (const [n, probs] of [
      [3000, [1 / 3, 1 / 3, 1 / 3]],
      [2000, [1 / 4, 3 / 4]],
      [2000, [2 / 3, 1 / 3]],
    ] as const) {
      const b = chiSquareBound(n, probs);
      assert.ok(b.rate <= PER_CHECK && b.rate > PER_CHECK / 2, `${n} ${probs.join(':')}: rate ${b.rate}`);
      assert.ok(Math.abs(b.critical - b.asymptotic) < 1, `${b.critical} near ${b.asymptotic}`);
    }
    // two categories: P(statistic > c) summed straight from the binomial agrees
    const n = 2000;
    const b = chiSquareBound(n, [1 / 4, 3 / 4]);
    const pmf = binomialPmf(n, 1 / 4);
    let tail = 0;
    for (let a = 0; a <= n; a++)
      if ((a - 500) ** 2 / 500 + (a - 500) ** 2 / 1500 > b.critical) tail += pmf[a]!;
    // (the bound's rate is 1 minus the mass inside: exact to about 1e-11)
    assert.ok(Math.abs(tail - b.rate) < 1e-10, `tail beyond the critical value: ${tail} vs ${b.rate}`);
    // for large n the exact bound approaches the chi-square value
    const large = chiSquareBound(200000, [1 / 2, 1 / 2], 1e-6);
    close(large.critical, chiSquareQuantile(1e-6, 1), 0.01, 'n = 200000');
  });

  void it('a skewed split needs a larger bound than chi-square gives: the approximation would flake', () => {
    // 1/13 of 2000: at chi-square's 23.93 the binomial's real tail is above 1e-6
    const b = chiSquareBound(2000, [1 / 13, 12 / 13], 1e-6);
    assert.ok(b.critical > b.asymptotic + 1, `${b.critical} vs ${b.asymptotic}`);
  });
});

void describe('binomial bounds', () => {
  void it('the probabilities sum to 1 and the tails hold their rate', () => {
    const pmf = binomialPmf(300, 1 / 9);
    close(
      pmf.reduce((a, b) => a + b, 0),
      1,
      1e-12,
      'sum',
    );
    const up = binomialUpperBound(300, 1 / 9);
    assert.ok(up.rate <= PER_CHECK);
    let tail = 0;
    for (let x = up.bound - 1; x <= 300; x++) tail += pmf[x]!;
    assert.ok(tail > PER_CHECK, 'one lower would exceed the rate');
    const two = binomialBound(2000, 1 / 4);
    assert.ok(two.rate <= PER_CHECK && two.low < 500 && two.high > 500);
  });
});
