"""Generate the bundled multi-turn chat set (a bookshop's order assistant), deterministically.

Each conversation gives the assistant, in its system instruction, a persona, a reply format and one order record
(title, author, price, status). The customer then asks two or three things in a row: where the order is, what it
cost, which book it was, to change the address, to cancel it, or says thanks. Every reply is one short sentence
that ends with the order number in brackets, and is fully determined by the record and the earlier turns: an order
that is still being packed can be redirected or cancelled, one that has shipped cannot, and after a cancellation or
an address change, "where is it?" has a different answer. The model must learn the persona's format and policy,
and carry state across turns.

Writes, next to this script (the Gemini `contents` format): chat_train.jsonl, chat_val.jsonl, chat_test.jsonl.
For evaluation the reference is the last model turn and the prompt is everything before it (earlier model turns
included, as written here). No conversation appears twice across the splits.

Usage: python examples/data/make_chat.py [--train 200] [--val 40] [--test 40] [--seed 5]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SHOP = "Larkspur Books"
TITLES = [("The Salt Road", "Mara Quill"), ("Winter Orchard", "Tom Avery"), ("A Map of Small Rivers", "Ines Duarte"),
          ("The Glass Hour", "Kofi Mensah"), ("Night Ferry", "Lena Hart"), ("Paper Lanterns", "Yuki Sato"),
          ("The Long Field", "Owen Price"), ("Quiet Engines", "Rosa Lind"), ("Harbour Lights", "Sam Okafor"),
          ("The Copper Garden", "Ada Vale"), ("North of Nowhere", "Jon Berg"), ("Seven Bells", "Priya Nair")]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
STREETS = ["Mill Lane", "Park Road", "Station Street", "Church Walk", "High Street", "Orchard Close", "Quay Street"]

ASK = {
    "where": ["Where is my order?", "Has it shipped yet?", "When will it get here?", "Any news on my order?",
              "Where's my book now?"],
    "price": ["How much did I pay?", "What did it cost me?", "Remind me of the price?", "What was the total?"],
    "book": ["Which book was it again?", "What did I order?", "Can you remind me what's in that order?"],
    "address": ["Can you send it to {addr} instead?", "Please change the address to {addr}.",
                "I've moved, could it go to {addr}?"],
    "cancel": ["Please cancel it.", "I'd like to cancel this order.", "Can I still cancel?",
               "I don't need it any more, cancel please."],
    "thanks": ["Thanks, that's all.", "Great, thank you!", "Perfect, thanks.", "OK, cheers."],
}


def system(order: dict) -> str:
    status = {"packing": f"being packed, ships {order['ship']}",
              "shipped": f"shipped {order['ship']}, due {order['due']}",
              "delivered": f"delivered {order['due']}"}[order["status"]]
    return (f"You are Penny of {SHOP}. Reply in one short sentence ending with the order number in brackets.\n"
            f"Order {order['n']}: {order['title']} by {order['author']}, £{order['price']}, {status}.")


def reply(intent: str, order: dict, state: dict) -> str:
    """Penny's answer to `intent`, given the record and what earlier turns changed (state: cancelled, addr)."""
    tag, price, status = f"[#{order['n']}]", f"£{order['price']}", order["status"]
    if intent == "price":
        return f"You paid {price} for {order['title']}. {tag}"
    if intent == "book":
        return f"It was {order['title']} by {order['author']}. {tag}"
    if intent == "thanks":
        return f"You're welcome, happy reading! {tag}"
    if intent == "where":
        if state["cancelled"]:
            return f"It was cancelled, so nothing will be sent. {tag}"
        if status == "packing":
            to = f" to {state['addr']}" if state["addr"] else ""
            return f"It is being packed and ships{to} on {order['ship']}. {tag}"
        if status == "shipped":
            return f"It shipped on {order['ship']} and is due on {order['due']}. {tag}"
        return f"It was delivered on {order['due']}. {tag}"
    if intent == "address":
        if state["cancelled"]:
            return f"It was cancelled, so there is nothing to redirect. {tag}"
        if status == "packing":
            state["addr"] = state["next_addr"]
            return f"Done, it will now go to {state['addr']}. {tag}"
        done = "shipped" if status == "shipped" else "been delivered"
        return f"Sorry, it has already {done}, so the address can't change. {tag}"
    assert intent == "cancel", intent
    if state["cancelled"]:
        return f"It is already cancelled. {tag}"
    if status == "packing":
        state["cancelled"] = True
        return f"Cancelled; {price} will be back on your card within 5 days. {tag}"
    done = "shipped" if status == "shipped" else "arrived"
    return f"It has {done}, but you can return it within 30 days for a refund of {price}. {tag}"


def conversation(rng: random.Random) -> dict:
    title, author = rng.choice(TITLES)
    ship = rng.randrange(len(DAYS) - 2)
    order = {"n": rng.randint(1000, 9999), "title": title, "author": author,
             "price": f"{rng.randint(6, 29)}.{rng.choice(['00', '50', '99'])}",
             "status": rng.choice(["packing", "packing", "shipped", "shipped", "delivered"]),
             "ship": DAYS[ship], "due": DAYS[ship + rng.randint(1, 2)]}
    state = {"cancelled": False, "addr": None, "next_addr": f"{rng.randint(2, 98)} {rng.choice(STREETS)}"}
    intents = rng.sample(["where", "price", "book", "address", "cancel"], rng.choice([2, 3]))
    if len(intents) == 3 and rng.random() < 0.3:  # sometimes the customer closes with thanks
        intents[-1] = "thanks"
    elif len(intents) == 2 and intents[1] in ("address", "cancel") and rng.random() < 0.6:
        intents.append("where")  # asked again after a change: the answer must follow it
    contents = []
    for intent in intents:
        ask = rng.choice(ASK[intent]).format(addr=state["next_addr"])
        contents += [{"role": "user", "parts": [{"text": ask}]},
                     {"role": "model", "parts": [{"text": reply(intent, order, state)}]}]
    return {"systemInstruction": {"parts": [{"text": system(order)}]}, "contents": contents}


def make(n: int, rng: random.Random) -> list[dict]:
    """n distinct conversations."""
    seen: set[str] = set()
    rows: list[dict] = []
    while len(rows) < n:
        row = conversation(rng)
        key = json.dumps(row, sort_keys=True)
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows


def write(out: Path, train: int = 200, val: int = 40, test: int = 40, seed: int = 5) -> dict[str, int]:
    rows = make(train + val + test, random.Random(seed))
    splits = {"chat_train.jsonl": rows[:train], "chat_val.jsonl": rows[train:train + val],
              "chat_test.jsonl": rows[train + val:]}
    for name, part in splits.items():
        (out / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
    return {name: len(part) for name, part in splits.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("train", 200), ("val", 40), ("test", 40), ("seed", 5)):
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = ap.parse_args()
    counts = write(args.out, args.train, args.val, args.test, args.seed)
    print(f"wrote {', '.join(f'{v} {k}' for k, v in counts.items())} to {args.out}")


if __name__ == "__main__":
    main()
