//! The seed integration's order export: deterministic XML in the shape
//! `examples/integrations/seed.yaml` parses, and the figures a correct run
//! computes from it.
//!
//! `examples/seed/endpoints.py` generates the same document with the same
//! formulas; change both together.

use std::fmt::Write as _;

/// When every export says it was made.
pub const SEED_EXPORTED: &str = "2026-11-27T02:00:00Z";

const CUSTOMERS: [&str; 8] = [
    "Acme GmbH",
    "Nordic Tools AB",
    "Müller & Söhne KG",
    "Baker Industrial",
    "Costa Hermanos SA",
    "Dubois et Fils",
    "Eastern Fasteners",
    "Fjord Supply AS",
];

/// One `<line>` of an order: the quantity and the unit price in cents.
struct Line {
    sku: usize,
    qty: u64,
    cents: u64,
}

fn cancelled(i: usize) -> bool {
    i % 5 == 3
}

fn lines(i: usize) -> impl Iterator<Item = Line> {
    let count = 1 + (i * 7) % 4;
    (0..count).map(move |j| Line {
        sku: (i * 13 + j * 29) % 500 + 1,
        qty: ((i * 5 + j * 3) % 9 + 1) as u64,
        cents: (150 + (i * 37 + j * 91) % 4850) as u64,
    })
}

/// An order export with `orders` orders: ids `A1000`, `A1001`, ..., every
/// fifth one `status="cancelled"`, 1 to 4 `<line>`s each. 100 orders make
/// about 21 KB.
pub fn seed_orders_xml(orders: usize) -> String {
    let mut xml = String::with_capacity(orders * 220 + 64);
    let _ = writeln!(xml, "<orders exported=\"{SEED_EXPORTED}\">");
    for i in 0..orders {
        let status = if cancelled(i) { "cancelled" } else { "open" };
        let customer = CUSTOMERS[(i * 3) % CUSTOMERS.len()].replace('&', "&amp;");
        let _ = writeln!(xml, "  <order id=\"A{}\" status=\"{status}\">", 1000 + i);
        let _ = writeln!(xml, "    <customer>{customer}</customer>");
        for line in lines(i) {
            let _ = writeln!(
                xml,
                "    <line sku=\"SKU-{:04}\" qty=\"{}\" price=\"{}.{:02}\"/>",
                line.sku,
                line.qty,
                line.cents / 100,
                line.cents % 100
            );
        }
        xml.push_str("  </order>\n");
    }
    xml.push_str("</orders>\n");
    xml
}

/// What the seed integration computes from `seed_orders_xml(orders)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedExpected {
    /// Orders in the export.
    pub orders: usize,
    /// Orders that are not cancelled: the `count` the ERP receives.
    pub open: usize,
    /// The open orders' total, in cents: `total` is this divided by 100.
    pub total_cents: u64,
}

/// The figures a correct run of the seed integration reports for
/// `seed_orders_xml(orders)`.
pub fn seed_orders_expected(orders: usize) -> SeedExpected {
    let open: Vec<usize> = (0..orders).filter(|&i| !cancelled(i)).collect();
    let total_cents = open
        .iter()
        .flat_map(|&i| lines(i))
        .map(|l| l.qty * l.cents)
        .sum();
    SeedExpected {
        orders,
        open: open.len(),
        total_cents,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hundred_orders_are_about_21_kb_with_a_fifth_cancelled() {
        let xml = seed_orders_xml(100);
        assert!((19_000..23_000).contains(&xml.len()), "{} bytes", xml.len());
        assert!(xml.starts_with(
            "<orders exported=\"2026-11-27T02:00:00Z\">\n  <order id=\"A1000\" status=\"open\">"
        ));
        assert_eq!(xml.matches("<order ").count(), 100);
        assert_eq!(xml.matches("status=\"cancelled\"").count(), 20);
        assert!(xml.contains("<customer>Müller &amp; Söhne KG</customer>"));
        assert_eq!(xml, seed_orders_xml(100), "deterministic");
        let lines = xml.matches("<line ").count();
        assert!((100..=400).contains(&lines));
        let expected = seed_orders_expected(100);
        assert_eq!((expected.orders, expected.open), (100, 80));
        assert!(expected.total_cents > 0);
    }
}
