// A code step from the seed integration: the previous step fetched an XML
// order export; this step turns it into the JSON the target API expects.
export default function (input, ctx) {
  const doc = ctx.xml.parse(input.xml, { alwaysArray: ["order", "line"] });
  const orders = doc.orders.order.filter((o) => o["@status"] !== "cancelled");
  ctx.log(`${orders.length} open orders of ${doc.orders.order.length}`);
  return {
    exportedAt: doc.orders["@exported"],
    orders: orders.map((o) => {
      const lines = o.line.map((l) => ({
        sku: l["@sku"],
        quantity: Number(l["@qty"]),
        amount: Number(l["@qty"]) * Number(l["@price"]),
      }));
      return {
        id: o["@id"],
        customer: o.customer,
        lines,
        total: lines.reduce((sum, l) => sum + l.amount, 0),
      };
    }),
  };
}
