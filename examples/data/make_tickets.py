"""Generate the bundled support-ticket routing set (8-way classification), deterministically.

Each ticket asks for one thing, in one of several phrasings with varied slots (products, amounts, days, devices),
wrapped in an opening, a context sentence, often a sentence that names another team's topic only to set it aside
("The payment went through fine, but ..."), and a closing. The answer is the team alone. A team's name rarely appears
in its own tickets, and every team's vocabulary (order, payment, account, app, parcel) appears in the others', so
one keyword does not decide the label: the request does.

Writes, next to this script (the Gemini `contents` format, with the routing instruction as systemInstruction):
    tickets_train.jsonl  tickets_val.jsonl  tickets_test.jsonl   (the test file is read by `tunery eval`: the
                                                                  reference is the model turn)
Classes are balanced in every split, and no ticket text appears twice across the splits.

Usage: python examples/data/make_tickets.py [--train 200] [--val 40] [--test 40] [--seed 11]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

LABELS = ("billing", "refund", "account", "security", "bug", "delivery", "cancellation", "feature")
SYSTEM = ("Route the customer's support ticket to one team: " + ", ".join(LABELS) + ". "
          "Reply with the team name only.")

PRODUCTS = ["blender", "desk lamp", "rain jacket", "coffee grinder", "yoga mat", "phone case", "backpack",
            "kettle", "bookshelf", "headphones", "air fryer", "wool scarf"]
DEVICES = ["iPhone", "Android phone", "iPad", "laptop", "work PC", "Chromebook"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
PLANS = ["Plus", "Family", "Basic", "Premium"]
NAMES = ["Ana", "Ben", "Chloe", "Dev", "Erin", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kemi", "Liam"]
FEATURES = ["a dark mode", "export to a spreadsheet", "a wish list I can share", "reminders before a plan renews",
            "filtering orders by date", "a way to split a payment", "saved delivery notes", "larger text in the app"]

# What the customer wants, per team. {p} product, {a} amount, {d} day, {v} device, {f} feature, {o} order, {n} plan.
REQUESTS = {
    "billing": [
        "I was charged {a} twice for the same order {o}.",
        "The invoice for order {o} shows {a}, but the checkout page said less.",
        "My card statement has a charge of {a} from you that I can't match to any purchase.",
        "Could you send me an invoice with my company's VAT number for order {o}?",
        "The {n} plan was supposed to cost less this month, yet I paid {a}.",
        "My card was declined at checkout although the bank says nothing is wrong, and now I see a pending {a}.",
        "Why did the price of the {n} plan go up without any notice before this month's payment?",
    ],
    "refund": [
        "I sent the {p} back on {d} and still haven't got my money back.",
        "The {p} I returned reached your warehouse a week ago; when will the {a} come back to my card?",
        "I only got part of the {a} back for the returned {p}, not the full price.",
        "You cancelled order {o} because the {p} was out of stock, but the {a} was never returned to me.",
        "The {p} stopped working after two days and I would like my money back rather than a replacement.",
        "Your return label says I'll be reimbursed in five days; it's been three weeks for the {p}.",
    ],
    "account": [
        "I can't sign in on my {v}: it keeps saying my password is wrong, even after I reset it.",
        "The password reset email never arrives, and I have checked the spam folder.",
        "I got locked out after a few attempts on my {v} and don't know how long to wait.",
        "I changed my phone number, so I can't receive the login code any more.",
        "How do I change the email address my profile uses? I no longer use the old one.",
        "The app on my {v} logs me out every time I close it.",
    ],
    "security": [
        "I got an email asking for my card details that looks like it came from you; is it real?",
        "My order history shows order {o} for a {p} that I never placed.",
        "There is a login from a {v} I don't own, from another country, on {d}.",
        "My password was changed on {d} and it wasn't me.",
        "Someone added a new delivery address to my profile without my knowledge.",
        "A stranger phoned claiming to be from your support and asked for the code you texted me.",
    ],
    "bug": [
        "The app crashes on my {v} as soon as I open the basket.",
        "Pressing the pay button on my {v} does nothing at all.",
        "The order page shows an error message instead of my orders since {d}.",
        "Search results on the {v} app show the {p} twice with different prices.",
        "The size chart overlaps the photos and I can't read it on my {v}.",
        "The download of my order history gives an empty file.",
        "Items I remove from the basket come back after I reload the page.",
    ],
    "delivery": [
        "The {p} from order {o} was due on {d} and hasn't shown up.",
        "Tracking for order {o} has said 'in transit' for six days without moving.",
        "The courier left my {p} with a neighbour I don't know; where is it exactly?",
        "The tracking page says the {p} was delivered on {d}, but nothing came.",
        "Can the courier come on {d} instead? I won't be home before then for the {p}.",
        "Order {o} went to my old address although I updated it before ordering.",
    ],
    "cancellation": [
        "Please stop my {n} plan from renewing next month.",
        "I'd like to cancel order {o} for the {p} before it ships.",
        "Please close my account for good and delete what you hold about me.",
        "I ordered the {p} by mistake on {d}; can you stop the order?",
        "I want to end my {n} membership at the end of this billing period.",
        "Don't send the {p} from order {o}, I no longer need it.",
    ],
    "feature": [
        "It would be great if the {v} app had {f}.",
        "Have you thought about adding {f}? I'd use it every week.",
        "Small suggestion: {f} would make ordering much easier for me.",
        "Is {f} planned? Several friends on the {n} plan would like it too.",
        "Please consider {f}; other shops already offer it.",
        "I'd love {f} on the {v}; the rest of the app is great.",
    ],
}

# Sentences that mention a team's topic only to rule it out: added to tickets of the *other* teams.
ASIDES = {
    "billing": ["The payment itself went through fine.", "I'm not asking about the charge, that part is right.",
                "My invoice is correct."],
    "refund": ["I don't want a refund.", "I'm not looking for my money back."],
    "account": ["Signing in works fine.", "I can log in without trouble."],
    "security": ["Nothing looks suspicious on my account.", "I don't think anyone else has used my details."],
    "bug": ["The app itself works well.", "The website loads fine for me."],
    "delivery": ["My last parcel arrived on time.", "The delivery was quick, no complaints there."],
    "cancellation": ["I'm not cancelling anything.", "I want to keep my plan."],
    "feature": ["I'm not suggesting anything new.", "The app has everything I need otherwise."],
}
OPENINGS = ["Hi,", "Hello,", "Hello team,", "Hey there.", "Good morning,", "Good evening,", "", ""]
CONTEXTS = ["I've been a customer since {y}.", "My order number is {o}.", "I mostly shop on my {v}.",
            "I'm on the {n} plan.", "This is my second message about this.", "", ""]
CLOSINGS = ["Thanks.", "Thank you!", "Cheers, {name}", "Regards, {name}", "Please help.", "Thanks in advance.", ""]


def _slots(rng: random.Random) -> dict:
    return {"p": rng.choice(PRODUCTS), "a": f"${rng.randint(8, 240)}.{rng.choice(['00', '49', '99'])}",
            "d": rng.choice(DAYS), "v": rng.choice(DEVICES), "f": rng.choice(FEATURES),
            "o": f"#{rng.randint(10000, 99999)}", "n": rng.choice(PLANS), "y": str(rng.randint(2014, 2024)),
            "name": rng.choice(NAMES)}


def ticket(label: str, rng: random.Random) -> str:
    """One ticket text for `label`."""
    s = _slots(rng)
    parts = [rng.choice(OPENINGS), rng.choice(CONTEXTS), rng.choice(REQUESTS[label])]
    if rng.random() < 0.6:  # an aside about another team's topic, before or after the request
        aside = rng.choice(ASIDES[rng.choice([lab for lab in LABELS if lab != label])])
        parts.insert(1 + rng.randrange(2), aside) if rng.random() < 0.5 else parts.append(aside)
    parts.append(rng.choice(CLOSINGS))
    return " ".join(p for p in parts if p).format(**s)


def make(n: int, rng: random.Random) -> list[tuple[str, str]]:
    """n distinct (ticket, label) pairs, the labels cycling through LABELS (balanced for n a multiple of 8)."""
    seen: set[str] = set()
    pairs: list[tuple[str, str]] = []
    while len(pairs) < n:
        label = LABELS[len(pairs) % len(LABELS)]
        text = ticket(label, rng)
        if text not in seen:
            seen.add(text)
            pairs.append((text, label))
    return pairs


def record(text: str, label: str) -> dict:
    return {"systemInstruction": {"parts": [{"text": SYSTEM}]},
            "contents": [{"role": "user", "parts": [{"text": f"Ticket: {text}"}]},
                         {"role": "model", "parts": [{"text": label}]}]}


def write(out: Path, train: int = 200, val: int = 40, test: int = 40, seed: int = 11) -> dict[str, int]:
    """Write the three splits under `out`; each split is shuffled (labels interleave) but balanced."""
    rng = random.Random(seed)
    pairs = make(train + val + test, rng)
    splits = {"tickets_train.jsonl": pairs[:train], "tickets_val.jsonl": pairs[train:train + val],
              "tickets_test.jsonl": pairs[train + val:]}
    for name, rows in splits.items():
        rng.shuffle(rows)
        (out / name).write_text("".join(json.dumps(record(t, lab)) + "\n" for t, lab in rows), encoding="utf-8")
    return {name: len(rows) for name, rows in splits.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("train", 200), ("val", 40), ("test", 40), ("seed", 11)):
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = ap.parse_args()
    counts = write(args.out, args.train, args.val, args.test, args.seed)
    print(f"wrote {', '.join(f'{v} {k}' for k, v in counts.items())} to {args.out}")


if __name__ == "__main__":
    main()
