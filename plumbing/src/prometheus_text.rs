//! Reading Prometheus text exposition (what `/metrics` serves), for tests and tools.

/// Every sample of `text`: its series (the name with its labels as exposed, `name{a="b"}`) and
/// its value. Comments and lines whose value is not a number are left out.
pub fn samples(text: &str) -> impl Iterator<Item = (&str, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            // The series ends at the first space after its labels (label values may hold spaces).
            let end = match line.rfind('}') {
                Some(close) => close + 1,
                None => line.find(' ')?,
            };
            let (series, rest) = line.split_at(end);
            let value = rest.split_whitespace().next()?.parse().ok()?;
            Some((series, value))
        })
}

/// The value of the sample `series`, or `None` when the text has none.
pub fn value(text: &str, series: &str) -> Option<f64> {
    samples(text).find_map(|(s, v)| (s == series).then_some(v))
}

/// The sum of every series of the metric `name` (whatever their labels), or `None` when the
/// text has none.
pub fn sum(text: &str, name: &str) -> Option<f64> {
    samples(text)
        .filter(|(series, _)| series.split('{').next() == Some(name))
        .map(|(_, v)| v)
        .reduce(|a, b| a + b)
}

/// Every metric family of `text`: its name, its type (`counter`, `gauge`, ... from `# TYPE`), and
/// the label names its samples carry, one line each (`name type label,label`; `untyped` without
/// a `# TYPE`), sorted: what a
/// dashboard depends on, without the values.
pub fn families(text: &str) -> Vec<String> {
    let mut families: std::collections::BTreeMap<&str, (&str, std::collections::BTreeSet<&str>)> =
        Default::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, kind)) = rest.split_once(' ')
        {
            families.entry(name).or_default().0 = kind.trim();
        }
    }
    for (series, _) in samples(text) {
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let entry = families.entry(name).or_default();
        for pair in labels.trim_end_matches('}').split(',') {
            if let Some((label, _)) = pair.split_once('=') {
                entry.1.insert(label.trim());
            }
        }
    }
    families
        .into_iter()
        .map(|(name, (kind, labels))| {
            let kind = if kind.is_empty() { "untyped" } else { kind };
            let labels: Vec<&str> = labels.into_iter().collect();
            format!("{name} {kind} {}", labels.join(","))
                .trim_end()
                .to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP a_total Things.\n# TYPE a_total counter\na_total 3\n\
                        a_total_more 9\nb{dir=\"up\"} 1.5\nb{dir=\"down\",why=\"a b\"} 2 1700000000\n";

    #[test]
    fn a_sample_is_found_by_its_whole_name_and_labels() {
        assert_eq!(value(PAGE, "a_total"), Some(3.0));
        assert_eq!(value(PAGE, "a_total_more"), Some(9.0));
        assert_eq!(value(PAGE, "b{dir=\"up\"}"), Some(1.5));
        assert_eq!(value(PAGE, "b{dir=\"down\",why=\"a b\"}"), Some(2.0));
        assert_eq!(value(PAGE, "a"), None);
    }

    #[test]
    fn families_name_their_type_and_labels() {
        assert_eq!(
            families(PAGE),
            [
                "a_total counter",
                "a_total_more untyped",
                "b untyped dir,why"
            ]
        );
    }

    #[test]
    fn a_metric_sums_over_its_labels() {
        assert_eq!(sum(PAGE, "b"), Some(3.5));
        assert_eq!(sum(PAGE, "a_total"), Some(3.0));
        assert_eq!(sum(PAGE, "c"), None);
    }
}
