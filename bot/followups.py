"""Follow-up messages that state no intent of their own ("it's order 4432", "yes please", "I bought it on
Monday"): what a customer types after a request, to answer the bot or add a detail.

Training shows the classifier some of its examples as the earlier turn of one of these, labelled with the
example's intent (bot/train.py, `Trainer.in_context`), so that it learns to read the conversation when the
message itself says nothing about the intent. Generated from templates with a seeded random generator;
nothing here comes from any bot's data. `benchmarks/context.py` tests on follow-ups written apart from these
templates.
"""
from __future__ import annotations

import random

# Only what belongs to no support intent: no payment, delivery, address or urgency words, which would teach a bot
# with such intents that its own examples' words mean "whatever was asked before".
TEMPLATES = [
    "it's order {num}", "order number {num}", "the order number is {num}", "{num}", "order #{num}",
    "it was order {num}, i placed it {when}", "the reference is {num}", "my order is {num}",
    "i placed it {when}", "{when}", "it was {when}", "i ordered it {when}",
    "yes", "yes please", "yeah", "sure", "ok", "okay, go ahead", "please do", "that's right", "correct",
    "yes, that one", "no, the other one", "no", "not yet", "i think so",
    "my name is {name}", "it's under {name}", "the account is under {name}", "it's in my name, {name}",
    "my email is {email}", "{email}", "you can reach me at {phone}", "my number is {phone}",
    "the one i ordered {when}", "for the {item}", "it's the {item}", "the {item} i bought {when}",
    "the {item}", "both of them", "just the first one", "all of it", "only the {item}",
    "{when} works for me", "i already told you", "same as before", "the same one",
    "it's for me", "it's for my {who}",
]
WHEN = ["yesterday", "last week", "two days ago", "on monday", "on the 3rd", "this morning", "last month",
        "on friday", "a week ago", "today", "on march 12", "last night"]
NAMES = ["sam taylor", "maria garcia", "li wei", "john smith", "aisha khan", "tom becker", "ana silva"]
ITEMS = ["shoes", "jacket", "laptop", "headphones", "blue shirt", "coffee maker", "phone case", "backpack"]
WHO = ["wife", "husband", "son", "daughter", "mother", "friend", "company"]


def follow_up(rng: random.Random) -> str:
    """One generated follow-up message."""
    name = rng.choice(NAMES)
    return rng.choice(TEMPLATES).format(
        num=str(rng.randint(100, 99_999_999)), when=rng.choice(WHEN), name=name, item=rng.choice(ITEMS),
        email=name.replace(" ", ".") + "@example.com", phone=f"555-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}",
        who=rng.choice(WHO))
