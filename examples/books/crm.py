"""Example CRM Book: customers, their account managers and leads (in memory)."""

CUSTOMERS = {
    "C-100": {"id": "C-100", "name": "Acme Tools", "tier": "gold", "manager": "ada@example.com",
              "email": "billing@acme.example"},
    "C-200": {"id": "C-200", "name": "Globex", "tier": "silver", "manager": "grace@example.com",
              "email": "ap@globex.example"},
    "C-300": {"id": "C-300", "name": "Initech", "tier": "bronze", "manager": "alan@example.com",
              "email": "finance@initech.example"},
}
LEADS: list[dict[str, object]] = []


def get_customer(customer_id):
    if customer_id not in CUSTOMERS:
        raise LookupError(f"no customer {customer_id}")
    return CUSTOMERS[customer_id]


def create_lead(name, company, score=0):
    lead = {"id": f"L-{len(LEADS) + 1}", "name": name, "company": company, "score": score}
    LEADS.append(lead)
    return lead


def find_company(domain):
    known = {"acme.example": "Acme Tools", "globex.example": "Globex"}
    return known.get(domain)
