"""Example ERP Book: open invoices, approvals, payments and subscriptions (in memory)."""

INVOICES = {
    "INV-1": {"id": "INV-1", "customer": "C-100", "amount": 1200.0, "currency": "EUR",
              "lines": [{"sku": "DRILL", "qty": 4, "price": 300.0}]},
    "INV-2": {"id": "INV-2", "customer": "C-200", "amount": 18500.0, "currency": "EUR",
              "lines": [{"sku": "LATHE", "qty": 1, "price": 18500.0}]},
    "INV-3": {"id": "INV-3", "customer": "C-300", "amount": 640.5, "currency": "EUR",
              "lines": [{"sku": "SAW", "qty": 3, "price": 213.5}]},
}
APPROVED: dict[str, str] = {}


def list_open_invoices(limit=100):
    return [inv for inv in INVOICES.values() if inv["id"] not in APPROVED][:limit]


def approve_invoice(invoice_id, approver):
    if invoice_id not in INVOICES:
        raise KeyError(f"no invoice {invoice_id}")
    APPROVED[invoice_id] = approver
    return {"invoice": invoice_id, "status": "approved", "approver": approver}


def hold_invoice(invoice_id, reason):
    return {"invoice": invoice_id, "status": "on_hold", "reason": reason}


def subscriptions_due(days):
    return [
        {"id": "S-1", "customer": "C-100", "plan": "pro", "seats": 12, "price_per_seat": 30.0},
        {"id": "S-2", "customer": "C-200", "plan": "team", "seats": 3, "price_per_seat": 12.0},
        {"id": "S-3", "customer": "C-300", "plan": "pro", "seats": 40, "price_per_seat": 30.0},
    ]


def renew(subscription_id, seats, discount=0.0):
    return {"subscription": subscription_id, "seats": seats, "discount": discount,
            "status": "renewed"}
