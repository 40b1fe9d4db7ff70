//! The `/metrics` page: families of samples, written in Prometheus's text format (version 0.0.4,
//! not OpenMetrics: counters keep their `_total` names and there is no `# EOF`) by the
//! `prometheus` crate's encoder. A family without samples is left out, as in Prometheus's own
//! client libraries.

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};

/// The page's content type.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// The families of one page that have samples, in the order they are added.
#[derive(Debug, Default)]
pub struct Page {
    families: Vec<MetricFamily>,
}

/// One sample: its labels (name, value) and its value.
#[derive(Debug, Clone)]
pub struct Sample {
    labels: Vec<LabelPair>,
    value: f64,
}

impl Sample {
    pub fn new(value: f64) -> Self {
        Sample {
            labels: Vec::new(),
            value,
        }
    }

    pub fn label(mut self, name: &str, value: &str) -> Self {
        let mut pair = LabelPair::default();
        pair.set_name(name.to_string());
        pair.set_value(value.to_string());
        self.labels.push(pair);
        self
    }
}

impl Page {
    /// A counter without labels.
    pub fn counter(&mut self, name: &str, help: &str, value: f64) {
        self.counters(name, help, [Sample::new(value)]);
    }

    /// A gauge without labels.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.gauges(name, help, [Sample::new(value)]);
    }

    pub fn counters(&mut self, name: &str, help: &str, samples: impl IntoIterator<Item = Sample>) {
        self.family(MetricType::COUNTER, name, help, samples);
    }

    pub fn gauges(&mut self, name: &str, help: &str, samples: impl IntoIterator<Item = Sample>) {
        self.family(MetricType::GAUGE, name, help, samples);
    }

    fn family(
        &mut self,
        kind: MetricType,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = Sample>,
    ) {
        let metrics = samples
            .into_iter()
            .map(|sample| {
                let mut metric = Metric::from_label(sample.labels);
                match kind {
                    MetricType::COUNTER => {
                        let mut counter = Counter::default();
                        counter.set_value(sample.value);
                        metric.set_counter(counter);
                    }
                    _ => {
                        let mut gauge = Gauge::default();
                        gauge.set_value(sample.value);
                        metric.set_gauge(gauge);
                    }
                }
                metric
            })
            .collect::<Vec<_>>();
        if metrics.is_empty() {
            return;
        }
        let mut family = MetricFamily::default();
        family.set_name(name.to_string());
        family.set_help(help.to_string());
        family.set_field_type(kind);
        family.set_metric(metrics);
        self.families.push(family);
    }

    /// The page as text.
    pub fn text(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.families, &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_text_format_and_leaves_out_empty_families() {
        let mut page = Page::default();
        page.counter("relay_total", "Things \\ counted.", 3.0);
        page.gauges("empty", "Nothing yet.", []);
        page.gauges(
            "by_state",
            "By state.",
            [Sample::new(1.5).label("state", "a\"b")],
        );
        assert_eq!(
            page.text().unwrap(),
            "# HELP relay_total Things \\\\ counted.\n# TYPE relay_total counter\nrelay_total 3\n\
             # HELP by_state By state.\n# TYPE by_state gauge\nby_state{state=\"a\\\"b\"} 1.5\n"
        );
    }
}
