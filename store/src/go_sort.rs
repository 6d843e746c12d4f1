//! The sort etcd's range results go through, reproduced so that ties come out in the same
//! order as etcd's.
//!
//! etcd sorts range results with Go's `sort.Sort`, which is not stable: keys with equal sort
//! values (the same version, say) come out in an order fixed by the algorithm — an
//! introsort (quicksort with a median-of-three or ninther pivot, heapsort past a depth
//! limit, a gap-6 shell pass plus insertion sort on runs of at most 12). With a `limit`, the
//! order of ties even decides *which* keys are returned, so matching etcd means running the
//! same algorithm on the same input (keys in ascending key order). This is an independent
//! implementation of that published algorithm, operating on a slice with a `less` closure.

/// Sorts `v` in place exactly as Go's `sort.Sort` does with `less` as `Less`.
pub(crate) fn go_sort<T>(v: &mut [T], less: &impl Fn(&T, &T) -> bool) {
    let n = v.len();
    quick_sort(v, 0, n, max_depth(n), less);
}

fn max_depth(n: usize) -> usize {
    let mut depth = 0;
    let mut i = n;
    while i > 0 {
        depth += 1;
        i >>= 1;
    }
    depth * 2
}

fn lt<T>(v: &[T], i: usize, j: usize, less: &impl Fn(&T, &T) -> bool) -> bool {
    less(&v[i], &v[j])
}

fn insertion_sort<T>(v: &mut [T], a: usize, b: usize, less: &impl Fn(&T, &T) -> bool) {
    for i in a + 1..b {
        let mut j = i;
        while j > a && lt(v, j, j - 1, less) {
            v.swap(j, j - 1);
            j -= 1;
        }
    }
}

fn sift_down<T>(v: &mut [T], lo: usize, hi: usize, first: usize, less: &impl Fn(&T, &T) -> bool) {
    let mut root = lo;
    loop {
        let mut child = 2 * root + 1;
        if child >= hi {
            return;
        }
        if child + 1 < hi && lt(v, first + child, first + child + 1, less) {
            child += 1;
        }
        if !lt(v, first + root, first + child, less) {
            return;
        }
        v.swap(first + root, first + child);
        root = child;
    }
}

fn heap_sort<T>(v: &mut [T], a: usize, b: usize, less: &impl Fn(&T, &T) -> bool) {
    let first = a;
    let hi = b - a;
    for i in (0..=(hi.saturating_sub(1)) / 2).rev() {
        if hi > 0 {
            sift_down(v, i, hi, first, less);
        }
    }
    for i in (0..hi).rev() {
        v.swap(first, first + i);
        sift_down(v, 0, i, first, less);
    }
}

/// Orders `v[m0] <= v[m1] <= v[m2]` (Go's argument order: m1, m0, m2).
fn median_of_three<T>(v: &mut [T], m1: usize, m0: usize, m2: usize, less: &impl Fn(&T, &T) -> bool) {
    if lt(v, m1, m0, less) {
        v.swap(m1, m0);
    }
    if lt(v, m2, m1, less) {
        v.swap(m2, m1);
        if lt(v, m1, m0, less) {
            v.swap(m1, m0);
        }
    }
}

fn do_pivot<T>(v: &mut [T], lo: usize, hi: usize, less: &impl Fn(&T, &T) -> bool) -> (usize, usize) {
    let m = (lo + hi) / 2;
    if hi - lo > 40 {
        let s = (hi - lo) / 8;
        median_of_three(v, lo, lo + s, lo + 2 * s, less);
        median_of_three(v, m, m - s, m + s, less);
        median_of_three(v, hi - 1, hi - 1 - s, hi - 1 - 2 * s, less);
    }
    median_of_three(v, lo, m, hi - 1, less);

    // Invariants: v[lo] is the pivot; v[lo+1..a] < pivot; v[a..b] <= pivot;
    // v[b..c] unexamined; v[c..hi-1] > pivot; v[hi-1] >= pivot.
    let pivot = lo;
    let (mut a, mut c) = (lo + 1, hi - 1);
    while a < c && lt(v, a, pivot, less) {
        a += 1;
    }
    let mut b = a;
    loop {
        while b < c && !lt(v, pivot, b, less) {
            b += 1;
        }
        while b < c && lt(v, pivot, c - 1, less) {
            c -= 1;
        }
        if b >= c {
            break;
        }
        v.swap(b, c - 1);
        b += 1;
        c -= 1;
    }
    // Few elements above the pivot suggests many equal to it.
    let mut protect = hi - c < 5;
    if !protect && hi - c < (hi - lo) / 4 {
        let mut dups = 0;
        if !lt(v, pivot, hi - 1, less) {
            v.swap(c, hi - 1);
            c += 1;
            dups += 1;
        }
        if !lt(v, b - 1, pivot, less) {
            b -= 1;
            dups += 1;
        }
        if !lt(v, m, pivot, less) {
            v.swap(m, b - 1);
            b -= 1;
            dups += 1;
        }
        protect = dups > 1;
    }
    if protect {
        // Invariant added: v[a..b] unexamined, v[b..c] equal to the pivot.
        loop {
            while a < b && !lt(v, b - 1, pivot, less) {
                b -= 1;
            }
            while a < b && lt(v, a, pivot, less) {
                a += 1;
            }
            if a >= b {
                break;
            }
            v.swap(a, b - 1);
            a += 1;
            b -= 1;
        }
    }
    v.swap(pivot, b - 1);
    (b - 1, c)
}

fn quick_sort<T>(v: &mut [T], mut a: usize, mut b: usize, mut depth: usize, less: &impl Fn(&T, &T) -> bool) {
    while b - a > 12 {
        if depth == 0 {
            heap_sort(v, a, b, less);
            return;
        }
        depth -= 1;
        let (mlo, mhi) = do_pivot(v, a, b, less);
        if mlo - a < b - mhi {
            quick_sort(v, a, mlo, depth, less);
            a = mhi;
        } else {
            quick_sort(v, mhi, b, depth, less);
            b = mlo;
        }
    }
    if b - a > 1 {
        // A gap-6 shell pass, then insertion sort (runs are at most 12 long here).
        for i in a + 6..b {
            if lt(v, i, i - 6, less) {
                v.swap(i, i - 6);
            }
        }
        insertion_sort(v, a, b, less);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// etcd 3.5.1 on `get a --from-key --sort-by VERSION --order ASCEND` over keys
    /// a,b,c,d,foo,foo1,foo2,fresh,fresh2 with versions 3,1,2,1,3,1,1,1,1 returned
    /// foo2,b,fresh2,d,foo1,fresh,c,foo,a.
    #[test]
    fn ties_come_out_as_etcds() {
        let mut v = vec![
            ("a", 3),
            ("b", 1),
            ("c", 2),
            ("d", 1),
            ("foo", 3),
            ("foo1", 1),
            ("foo2", 1),
            ("fresh", 1),
            ("fresh2", 1),
        ];
        go_sort(&mut v, &|x: &(&str, i32), y: &(&str, i32)| x.1 < y.1);
        let keys: Vec<&str> = v.iter().map(|x| x.0).collect();
        assert_eq!(keys, ["foo2", "b", "fresh2", "d", "foo1", "fresh", "c", "foo", "a"]);
    }

    proptest! {
        #[test]
        fn sorts_like_a_sort(mut v in proptest::collection::vec(0u8..8, 0..300)) {
            let mut expected = v.clone();
            expected.sort();
            go_sort(&mut v, &|a: &u8, b: &u8| a < b);
            prop_assert_eq!(v, expected);
        }
    }
}
