"""Big Five contrastive data and questionnaire, written for steerlens (not copied from any inventory).

- ``SITUATIONS``: everyday contexts. ``STATEMENTS[trait]``: (high, low) first-person reactions that fit any
  situation. Crossing them gives balanced high/low pairs; held-out splits are by statement pair, so a test
  pair's wording is never seen in training.
- ``ITEMS[trait]``: Likert items, half reverse-keyed (agreeing lowers the trait score).
- ``PERSONAS[trait]``: (high, low) descriptions for the prompting (ICL persona) baseline.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from steerlens.errors import EmptyInput, SteerlensError

TRAITS = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")

SITUATIONS = (
    "A friend invites me to a weekend trip that was planned at the last minute.",
    "My manager asks me to take over a project from a colleague who left.",
    "I am at a dinner party where I know only the host.",
    "A neighbour asks to borrow my car for the afternoon.",
    "My train is cancelled and I will be late for an appointment.",
    "Someone suggests we try a restaurant serving food I have never eaten.",
    "I have a free Saturday with nothing scheduled.",
    "A coworker criticises my report in front of the team.",
    "My sister asks me to help her move to a new flat.",
    "I receive an invitation to a museum opening with modern sculpture.",
    "The deadline for my tax forms is next week.",
    "A stranger on the bus starts a conversation with me.",
    "My team disagrees about how to split the work on a shared task.",
    "I notice a small mistake in a bill that is in my favour.",
    "I am asked to give a short speech at a colleague's farewell.",
    "My landlord says the rent will go up next month.",
)

# (high, low) reactions; each pair is about the same behaviour so the contrast isolates the trait.
STATEMENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "openness": (
        (
            "I get curious and want to see it as a chance to try something new.",
            "I would rather stick with what I already know works.",
        ),
        (
            "I start imagining all the unusual ways this could turn out.",
            "I don't spend time imagining possibilities; I deal with the facts.",
        ),
        (
            "I love exploring ideas and art that are unfamiliar to me.",
            "Unfamiliar ideas and strange art mostly bore me.",
        ),
        (
            "I ask lots of questions because new perspectives fascinate me.",
            "I don't see the point of looking at it from other perspectives.",
        ),
        (
            "I enjoy experimenting, even if the result is odd.",
            "I avoid experiments and prefer the usual way of doing things.",
        ),
        (
            "Thinking about abstract questions like this energises me.",
            "Abstract questions like this feel like a waste of time to me.",
        ),
        (
            "I'd happily change my routine to discover something different.",
            "I like my routine and dislike changing it.",
        ),
        (
            "I find beauty and meaning in small unexpected details.",
            "I rarely notice or care about artistic details.",
        ),
    ),
    "conscientiousness": (
        (
            "I make a plan right away and follow it step by step.",
            "I don't bother planning; I'll figure it out when it comes.",
        ),
        (
            "I double-check every detail so nothing goes wrong.",
            "I don't check details; small mistakes don't bother me.",
        ),
        (
            "I finish my part well before the deadline.",
            "I usually leave things until the last minute or later.",
        ),
        (
            "I keep my notes and things neatly organised for this.",
            "My things end up scattered and I often lose track of them.",
        ),
        (
            "I keep my promises even when it becomes inconvenient.",
            "If it gets inconvenient, I drop what I promised.",
        ),
        (
            "I write a list and tick off each task as I complete it.",
            "I never make lists; I just do whatever I feel like first.",
        ),
        (
            "I work steadily until the job is completely done.",
            "I get distracted and leave the job half finished.",
        ),
        (
            "I think carefully before acting so I don't make careless errors.",
            "I act on impulse and deal with the mess later.",
        ),
    ),
    "extraversion": (
        ("I jump in and start chatting with everyone around me.", "I stay quiet and keep to myself."),
        (
            "Being around lots of people gives me energy.",
            "Being around lots of people drains me; I need time alone.",
        ),
        ("I love being the centre of attention.", "I dislike having attention on me."),
        (
            "I suggest we get a big group together and make it lively.",
            "I'd much rather spend the time alone or with one person.",
        ),
        ("I speak up first and say what I think out loud.", "I hold back and let others do the talking."),
        ("I feel excited and enthusiastic and show it.", "I stay reserved and don't show much excitement."),
        ("I make new friends quickly and easily.", "It takes me a long time to warm up to new people."),
        (
            "I fill any silence with jokes and conversation.",
            "Silence is comfortable for me; I don't need to fill it.",
        ),
    ),
    "agreeableness": (
        (
            "I'm happy to help and make sure the other person feels supported.",
            "It's their problem; I don't see why I should help.",
        ),
        (
            "I assume the other person means well.",
            "I assume the other person is trying to take advantage of me.",
        ),
        (
            "I try hard to find a compromise that works for everyone.",
            "I push for what I want and don't care if others lose out.",
        ),
        ("I forgive quickly and don't hold a grudge.", "I hold a grudge and make sure they know it."),
        (
            "I speak kindly and consider how my words will make them feel.",
            "I say harsh things without caring how they feel.",
        ),
        (
            "I put the group's needs before my own convenience.",
            "My own convenience comes first, whatever the group needs.",
        ),
        ("I feel real sympathy for the people involved.", "Other people's troubles leave me cold."),
        (
            "I thank everyone and let them know I appreciate them.",
            "I don't bother thanking people; they should do their jobs.",
        ),
    ),
    "neuroticism": (
        (
            "I start worrying about everything that could go wrong.",
            "I stay calm; there's nothing worth worrying about.",
        ),
        (
            "I feel tense and anxious for the rest of the day.",
            "I feel relaxed and it doesn't affect my mood.",
        ),
        ("My mood drops and I feel upset for hours.", "My mood stays steady and I move on quickly."),
        ("I get easily stressed and overwhelmed by it.", "I handle the pressure easily without stress."),
        ("I panic a little and my thoughts start racing.", "I keep a clear head and think it through."),
        ("I feel insecure and wonder if I'm good enough.", "I feel secure and confident in myself."),
        ("Small setbacks like this make me irritable.", "Setbacks like this rarely irritate me."),
        ("I lie awake at night replaying it in my head.", "I sleep well and don't dwell on it."),
    ),
}

# (statement, reverse_keyed): a reverse-keyed item's agreement lowers the trait score.
ITEMS: dict[str, tuple[tuple[str, bool], ...]] = {
    "openness": (
        ("I enjoy thinking about new and unusual ideas.", False),
        ("I like visiting art galleries and hearing unfamiliar music.", False),
        ("I have a vivid imagination.", False),
        ("I am eager to try food and places I have never tried before.", False),
        ("I prefer doing things the way I always have.", True),
        ("I am not interested in abstract or philosophical discussions.", True),
        ("I find poetry and art boring.", True),
        ("I avoid changes to my routine.", True),
    ),
    "conscientiousness": (
        ("I always finish tasks before their deadlines.", False),
        ("I keep my belongings neat and organised.", False),
        ("I make plans and stick to them.", False),
        ("I pay close attention to details.", False),
        ("I often forget to put things back in their place.", True),
        ("I tend to put off important tasks.", True),
        ("I make careless mistakes.", True),
        ("I give up on tasks when they become boring.", True),
    ),
    "extraversion": (
        ("I feel comfortable around a lot of people.", False),
        ("I start conversations with strangers.", False),
        ("I enjoy being the centre of attention.", False),
        ("I am full of energy at parties.", False),
        ("I prefer to spend my evenings alone.", True),
        ("I keep in the background in groups.", True),
        ("I find it hard to talk to people I don't know.", True),
        ("I am a quiet person.", True),
    ),
    "agreeableness": (
        ("I care about how other people feel.", False),
        ("I like helping people even when it costs me time.", False),
        ("I trust that most people mean well.", False),
        ("I try to avoid arguments and find compromises.", False),
        ("I don't have much sympathy for others' problems.", True),
        ("I often insult or criticise people.", True),
        ("I put my own interests ahead of everyone else's.", True),
        ("I hold grudges for a long time.", True),
    ),
    "neuroticism": (
        ("I worry about things a lot.", False),
        ("I get stressed out easily.", False),
        ("My mood changes often.", False),
        ("I often feel anxious or tense.", False),
        ("I stay calm under pressure.", True),
        ("I am relaxed most of the time.", True),
        ("I rarely feel sad or down.", True),
        ("I recover quickly when something goes wrong.", True),
    ),
}

PERSONAS: dict[str, tuple[str, str]] = {
    "openness": (
        "very open to experience: curious, imaginative, artistic and eager for new ideas",
        "very closed to experience: conventional, practical, uninterested in art or new ideas",
    ),
    "conscientiousness": (
        "very conscientious: organised, careful, disciplined and reliable",
        "very unconscientious: disorganised, careless, impulsive and unreliable",
    ),
    "extraversion": (
        "very extraverted: outgoing, talkative, energetic and sociable",
        "very introverted: quiet, reserved, solitary and reticent",
    ),
    "agreeableness": (
        "very agreeable: kind, warm, trusting and cooperative",
        "very disagreeable: cold, harsh, suspicious and uncooperative",
    ),
    "neuroticism": (
        "very neurotic: anxious, moody, easily stressed and insecure",
        "very emotionally stable: calm, relaxed, secure and even-tempered",
    ),
}


@dataclass(frozen=True)
class ContrastPair:
    """One situation with a high-trait and a low-trait reaction; ``group`` identifies the statement pair."""

    trait: str
    situation: str
    high: str
    low: str
    group: str


def contrast_pairs(trait: str) -> list[ContrastPair]:
    """All situation x statement pairs for ``trait`` (the built-in set: 16 x 8 = 128 pairs)."""
    check_trait(trait)
    return [
        ContrastPair(trait, s, hi, lo, f"{trait}/{k}")
        for k, (hi, lo) in enumerate(STATEMENTS[trait])
        for s in SITUATIONS
    ]


def split_pairs(
    pairs: Sequence[ContrastPair], test_fraction: float = 0.25, seed: int = 0
) -> tuple[list[ContrastPair], list[ContrastPair]]:
    """(train, test) split by statement group, so test wording is never seen in training."""
    import random

    groups = sorted({p.group for p in pairs})
    if len(groups) < 2:
        raise SteerlensError(f"need >= 2 statement groups to split, got {groups}")
    rng = random.Random(seed)
    rng.shuffle(groups)
    n_test = max(1, round(len(groups) * test_fraction))
    test = set(groups[:n_test])
    return [p for p in pairs if p.group not in test], [p for p in pairs if p.group in test]


def load_contrast_jsonl(path: str | Path) -> list[ContrastPair]:
    """User pairs, one JSON object per line: ``{"trait", "situation", "high", "low"}`` and an optional
    ``"group"`` (defaults to the line number, i.e. every pair its own group)."""
    pairs = []
    for k, line in enumerate(Path(path).read_text().splitlines()):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = {"trait", "situation", "high", "low"} - set(row)
        if missing:
            raise SteerlensError(
                f"{path}:{k + 1} lacks {sorted(missing)}; each line needs trait/situation/high/low"
            )
        pairs.append(
            ContrastPair(row["trait"], row["situation"], row["high"], row["low"], str(row.get("group", k)))
        )
    if not pairs:
        raise EmptyInput(f"{path} holds no contrast pairs")
    return pairs


def check_trait(trait: str) -> None:
    if trait not in STATEMENTS:
        raise SteerlensError(f"unknown trait {trait!r}; expected one of {TRAITS}")
