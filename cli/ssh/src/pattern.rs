//! OpenSSH host patterns, shared by `ssh_config` `Host` lines and known_hosts host fields.
//!
//! A pattern list is comma- (known_hosts) or space-separated (ssh_config); each pattern may use
//! `*` (any run of characters, also none) and `?` (exactly one character), and a leading `!`
//! negates it. Matching is case-insensitive, as OpenSSH lowercases host names before matching.
//! A list matches when some positive pattern matches and no negated one does: a matching negated
//! pattern excludes the host whatever else matches (ssh_config(5), PATTERNS).

/// Whether `patterns` (already split) select `host`.
pub(crate) fn list_matches<'a>(patterns: impl IntoIterator<Item = &'a str>, host: &str) -> bool {
    let mut positive = false;
    for pattern in patterns {
        if let Some(negated) = pattern.strip_prefix('!') {
            if glob_matches(negated, host) {
                return false;
            }
        } else if glob_matches(pattern, host) {
            positive = true;
        }
    }
    positive
}

/// Whether `text` matches the wildcard `pattern` (`*`, `?`), ignoring ASCII case.
///
/// Iterative with single-star backtracking: linear space, O(pattern × text) time at worst, no
/// recursion to blow the stack on hostile input.
pub(crate) fn glob_matches(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().map(|c| c.to_ascii_lowercase()).collect();
    let text: Vec<char> = text.chars().map(|c| c.to_ascii_lowercase()).collect();
    let (mut p, mut t) = (0usize, 0usize);
    // Position of the last `*` seen and the text position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || Some(&c) == text.get(t) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                // Let the last `*` swallow one more character and retry after it.
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(p..)
        .is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_patterns_match_case_insensitively() {
        assert!(glob_matches("host.example.com", "HOST.example.COM"));
        assert!(!glob_matches("host.example.com", "host.example.co"));
        assert!(!glob_matches("host", "host2"));
        assert!(glob_matches("", ""));
        assert!(!glob_matches("", "a"));
    }

    #[test]
    fn wildcards() {
        assert!(glob_matches("*", ""));
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("*.example.com", "kvm1.example.com"));
        assert!(!glob_matches("*.example.com", "example.com"));
        assert!(glob_matches("kvm?", "kvm1"));
        assert!(!glob_matches("kvm?", "kvm12"));
        assert!(glob_matches("k*m*1", "kvm-a-m1"));
        assert!(glob_matches("[*]:2222", "[10.0.0.1]:2222"));
        assert!(!glob_matches("[*]:2222", "[10.0.0.1]:22"));
        assert!(glob_matches("a**b", "ab"));
    }

    #[test]
    fn hostile_pattern_terminates() {
        let pattern = "*a".repeat(50);
        let text = "a".repeat(60) + "b";
        assert!(!glob_matches(&pattern, &text));
    }

    #[test]
    fn negation_excludes_whatever_else_matches() {
        assert!(list_matches(
            ["*.example.com", "!bad.example.com"],
            "good.example.com"
        ));
        assert!(!list_matches(
            ["*.example.com", "!bad.example.com"],
            "bad.example.com"
        ));
        assert!(
            !list_matches(["!bad"], "good"),
            "a list of only negations matches nothing"
        );
        assert!(!list_matches([], "host"));
    }
}
