//! A small line diff (LCS) for readable mismatch reports.

/// Unified-style diff of `a` (left, `-`) and `b` (right, `+`) with `context` lines around
/// each change. Empty when equal.
pub fn unified(a: &str, b: &str, left: &str, right: &str, context: usize) -> String {
    if a == b {
        return String::new();
    }
    let x: Vec<&str> = a.lines().collect();
    let y: Vec<&str> = b.lines().collect();
    let (n, m) = (x.len(), y.len());
    // lcs[i][j] = LCS length of x[i..], y[j..]
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if x[i] == y[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    // ops: (' '|'-'|'+', line)
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && x[i] == y[j] {
            ops.push((' ', x[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', x[i]));
            i += 1;
        } else {
            ops.push(('+', y[j]));
            j += 1;
        }
    }
    let changed: Vec<usize> = ops.iter().enumerate().filter(|(_, (c, _))| *c != ' ').map(|(k, _)| k).collect();
    let mut out = format!("--- {left}\n+++ {right}\n");
    if changed.is_empty() {
        // Only a trailing-newline difference.
        out.push_str("(texts differ only in line endings)\n");
        return out;
    }
    let mut k = 0;
    while k < changed.len() {
        let start = changed[k].saturating_sub(context);
        let mut end = changed[k] + context + 1;
        while k + 1 < changed.len() && changed[k + 1] <= end + context {
            k += 1;
            end = changed[k] + context + 1;
        }
        let end = end.min(ops.len());
        let line_a = ops[..start].iter().filter(|(c, _)| *c != '+').count() + 1;
        let line_b = ops[..start].iter().filter(|(c, _)| *c != '-').count() + 1;
        out.push_str(&format!("@@ -{line_a} +{line_b} @@\n"));
        for (c, l) in &ops[start..end] {
            out.push_str(&format!("{c}{l}\n"));
        }
        k += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_is_empty() {
        assert_eq!(unified("a\nb\n", "a\nb\n", "l", "r", 2), "");
    }

    #[test]
    fn shows_changes_with_context() {
        let d = unified("a\nb\nc\nd\n", "a\nB\nc\nd\ne\n", "etcd", "plinth", 1);
        assert_eq!(d, "--- etcd\n+++ plinth\n@@ -1 +1 @@\n a\n-b\n+B\n c\n d\n+e\n");
    }
}
