"""Build the built-in prompt sets in ``data/`` from the hand-written parts below.

Run from the repository root; the output is deterministic (fixed seed, fixed iteration order)
and is committed next to this script::

    python data/_build/make_builtin.py

Writes ``data/personalization.jsonl``, ``data/general.jsonl`` and
``data/personalization_heldout_ids.txt``. All prompts and preference items were written for
this project (Apache-2.0).

How a personalization row is composed (seed 004, sec. 5.3 and App. C.2: a user context is a
short list of preference items stated in the user's own words):

- prompt-dependent rows (``context_group`` = the group): one or two items about the user's
  circumstances in that group (diet, budget, equipment...), sometimes one style item;
- prompt-independent rows (``context_group`` = null): zero to two style items (tone, length,
  format, expertise, approach), each prompt used twice with two different contexts;
- a fixed share of rows gets one or two verifiable items (word limits, bullet counts, required
  words...) that ``mipo_engine.judging.constraints`` can check.

Items within a row never share a tag, which keeps contradictory requirements (a 40-word limit
and "at least 150 words", "no lists" and "exactly 4 bullet points") out of one context.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from mipo_engine.judging.constraints import constraint_type  # noqa: E402

SEED = 20250601
DATA_DIR = REPO_ROOT / "data"
VERIFIABLE_SHARE = 0.56  # rows with at least one verifiable item
DOUBLE_VERIFIABLE_SHARE = 0.12  # rows with two verifiable items
STYLE_IN_GROUP_ROW_PROBABILITY = 0.3
HELDOUT_SHARE = 0.2
KINDS = ("explain", "write", "compare", "advice", "howto", "plan")


@dataclass(frozen=True)
class Item:
    """One preference statement; ``tags`` mark what it constrains, ``kinds`` where it fits."""

    text: str
    tags: frozenset[str]
    kinds: frozenset[str] = frozenset(KINDS)


@dataclass(frozen=True)
class Prompt:
    kind: str
    text: str


@dataclass(frozen=True)
class Group:
    """Prompts whose contexts only make sense together (e.g. cooking prompts, diet items)."""

    name: str
    prompts: tuple[Prompt, ...]
    items: dict[str, tuple[str, ...]]  # sub-dimension -> statements
    anchor: str | None = None  # sub-dimension every row of the group includes


def _prompts(*pairs: tuple[str, str]) -> tuple[Prompt, ...]:
    for kind, _ in pairs:
        assert kind in KINDS, kind
    return tuple(Prompt(kind, text) for kind, text in pairs)


# ============================================================================================
# Prompt-dependent groups
# ============================================================================================

GROUPS: tuple[Group, ...] = (
    Group(
        "cooking",
        _prompts(
            ("plan", "Can you plan a week of simple dinners for me?"),
            ("howto", "How do I make a good homemade pizza dough?"),
            ("advice", "What should I cook for a dinner party of six?"),
            ("howto", "What's a quick breakfast I can make before work?"),
            ("advice", "Suggest a comforting soup for a cold evening."),
            ("howto", "How can I meal-prep lunches for the whole week on Sunday?"),
            ("advice", "What can I bake for my coworker's birthday?"),
            ("explain", "Why does my rice always turn out mushy, and how do I fix it?"),
            ("advice", "Give me a few ideas for healthy snacks between meals."),
            ("howto", "How do I cook a stir-fry that doesn't end up soggy?"),
            ("plan", "Help me put together a picnic menu for a summer afternoon."),
            ("compare", "Is it cheaper to cook from scratch or buy ready meals?"),
        ),
        {
            "diet": (
                "I'm vegetarian, so no meat or fish.",
                "I eat a fully vegan diet.",
                "I have coeliac disease and must avoid gluten completely.",
                "I'm allergic to peanuts and tree nuts.",
                "I only eat halal food.",
                "My doctor told me to cut down on salt.",
            ),
            "kitchen": (
                "I live in a dorm with only a microwave and a kettle.",
                "I have an air fryer and a single hob.",
                "I don't own an oven.",
            ),
            "time": (
                "On weeknights I have about twenty minutes to cook.",
                "I'm happy to spend a slow Sunday afternoon cooking.",
            ),
            "skill": (
                "I'm a nervous beginner in the kitchen.",
                "I cook a lot and enjoy trying advanced techniques.",
            ),
            "household": (
                "I'm feeding two picky kids under eight.",
                "I live alone and hate leftovers going to waste.",
                "I'm on a tight food budget of about $50 a week.",
            ),
        },
    ),
    Group(
        "travel",
        _prompts(
            ("plan", "Plan a three-day trip to Lisbon for me."),
            ("advice", "What should I pack for a week-long trip in the mountains?"),
            ("advice", "Where should I go for a long weekend in early spring?"),
            ("howto", "How do I deal with jet lag after a long-haul flight?"),
            ("advice", "Suggest a road trip route that takes about a week."),
            ("compare", "Should I book a hotel or a holiday rental for my next trip?"),
            ("howto", "How can I find cheap flights without spending hours searching?"),
            ("plan", "Help me plan a day in Tokyo."),
            ("advice", "What are some good things to do in Rome that aren't too touristy?"),
            ("write", "Write a short message to my host asking for an early check-in."),
            ("advice", "What should I know before taking an overnight train for the first time?"),
            ("explain", "What travel insurance do I actually need for a trip abroad?"),
        ),
        {
            "budget": (
                "I travel on a shoestring: hostels, buses and street food.",
                "Money isn't a big concern; I like comfortable hotels.",
                "My total budget for the trip is about $800.",
            ),
            "mobility": (
                "I use a wheelchair, so step-free access matters a lot.",
                "I can't walk long distances because of a hip problem.",
            ),
            "companions": (
                "I'm travelling with my elderly parents.",
                "I'm travelling with a toddler.",
                "I'm a woman travelling solo and I care about safety.",
            ),
            "interests": (
                "I love museums and history more than nightlife.",
                "I'm a keen hiker and prefer nature to cities.",
                "Food is the main reason I travel.",
            ),
            "origin": (
                "I live in Toronto and fly out from there.",
                "I'm based in Sydney.",
            ),
        },
    ),
    Group(
        "fitness",
        _prompts(
            ("plan", "Give me a weekly workout plan."),
            ("howto", "How do I start running without getting injured?"),
            ("advice", "What exercises help with a stiff lower back?"),
            ("howto", "How can I build strength at home?"),
            ("advice", "What should I eat before and after a workout?"),
            ("explain", "How many rest days do I need each week?"),
            ("howto", "How do I stay motivated to exercise in winter?"),
            ("plan", "Create a 20-minute morning routine to wake my body up."),
            ("compare", "Is yoga or pilates better for improving flexibility?"),
            ("howto", "How do I warm up properly before lifting weights?"),
            ("advice", "How can I improve my balance?"),
            ("explain", "How do I know if I'm overtraining?"),
        ),
        {
            "injury": (
                "I have a bad left knee and can't do deep squats.",
                "I'm recovering from a shoulder injury.",
                "I have mild asthma.",
            ),
            "equipment": (
                "I only have a pair of dumbbells and a mat at home.",
                "I have a full gym membership.",
                "I don't have any equipment at all.",
            ),
            "goal": (
                "I'm training for my first half marathon.",
                "I want to lose some weight gently.",
                "My goal is to build muscle.",
            ),
            "schedule": (
                "I can only train three times a week for half an hour.",
                "I work shifts, so my schedule changes every week.",
            ),
            "age": (
                "I'm 62 and getting back into exercise after years off.",
                "I'm 16 and new to the gym.",
            ),
        },
    ),
    Group(
        "personal_finance",
        _prompts(
            ("howto", "How should I start building an emergency fund?"),
            ("advice", "How do I make a monthly budget that I'll actually stick to?"),
            ("explain", "What's the difference between a savings account and an index fund?"),
            ("advice", "Should I pay off debt or save first?"),
            ("howto", "How can I cut my monthly spending without feeling miserable?"),
            ("explain", "How does compound interest work?"),
            ("advice", "How much should I be saving for retirement?"),
            ("plan", "Help me plan for a big purchase next year."),
            ("explain", "What is a credit score and how can I improve mine?"),
            ("advice", "Is it worth getting a financial advisor?"),
            ("howto", "How do I split bills fairly with a partner who earns more than me?"),
            ("compare", "Should I rent or buy a home in the next few years?"),
        ),
        {
            "location": (
                "I live in the UK.",
                "I'm in the United States.",
                "I live in Germany.",
            ),
            "income": (
                "I'm a freelancer with an irregular income.",
                "I'm a student living on a small loan.",
                "I have a stable salary but no savings yet.",
            ),
            "goal": (
                "I'm saving for a house deposit.",
                "I want to retire early.",
                "I'm paying off about $12,000 in credit card debt.",
            ),
            "risk": (
                "I'm very risk-averse and hate the idea of losing money.",
                "I'm comfortable with risk for long-term growth.",
            ),
            "family": ("I support two children on a single income.",),
        },
    ),
    Group(
        "gardening",
        _prompts(
            ("advice", "What vegetables should I grow this year?"),
            ("howto", "How do I start composting?"),
            ("howto", "How can I keep my plants alive while I'm away for two weeks?"),
            ("advice", "What flowers will attract bees and butterflies?"),
            ("explain", "Why are the leaves on my tomato plants turning yellow?"),
            ("plan", "Help me plan a small herb garden."),
            ("howto", "How do I get rid of slugs?"),
            ("advice", "What low-maintenance plants would suit me?"),
            ("howto", "When and how should I prune my roses?"),
            ("explain", "How often should I water my plants?"),
            ("advice", "What can I plant in autumn?"),
            ("howto", "How do I grow strawberries in containers?"),
        ),
        {
            "climate": (
                "I garden in a hot, dry climate with water restrictions.",
                "Winters here are long and frosty.",
                "It rains almost every day where I live.",
            ),
            "space": (
                "I only have a small north-facing balcony.",
                "I have a large back garden with heavy clay soil.",
                "I grow everything on a sunny windowsill.",
            ),
            "pets": (
                "I have a cat, so nothing toxic to cats.",
                "My dog digs up anything planted in the ground.",
            ),
            "method": (
                "I garden organically and avoid synthetic sprays.",
                "I want to spend as little money as possible.",
            ),
            "time": ("I can only garden at weekends.",),
        },
    ),
    Group(
        "career",
        _prompts(
            ("howto", "How do I prepare for a job interview?"),
            ("write", "Write a short cover letter opening for a job I'm excited about."),
            ("advice", "How can I ask for a raise?"),
            ("advice", "Should I go back to school to change careers?"),
            ("howto", "How do I make my CV stand out?"),
            ("advice", "How can I grow my professional network?"),
            ("howto", "How do I negotiate a job offer?"),
            ("advice", "What should I do in my first month at a new job?"),
            ("write", "Write a LinkedIn headline for me."),
            ("explain", "How do I explain a gap in my CV?"),
            ("advice", "How can I find a mentor?"),
            ("plan", "Help me set career goals for the next year."),
        ),
        {
            "field": (
                "I'm a nurse thinking about moving into health tech.",
                "I'm a software developer with five years of experience.",
                "I work in retail and want an office job.",
                "I'm a secondary school teacher.",
            ),
            "stage": (
                "I'm a recent graduate with one internship.",
                "I'm in my late forties and changing careers.",
            ),
            "constraints": (
                "I care for my mother, so I need flexible hours.",
                "I only want fully remote roles.",
                "I'm shy and find self-promotion uncomfortable.",
            ),
            "location": ("I'm looking for work in Berlin but don't speak much German yet.",),
        },
    ),
    Group(
        "parenting",
        _prompts(
            ("advice", "How can I get my child to sleep through the night?"),
            ("advice", "What are some rainy-day activities I can do with my kid?"),
            ("howto", "How do I handle tantrums calmly?"),
            ("advice", "How can I encourage my child to read more?"),
            ("explain", "How do I talk to my child about a death in the family?"),
            ("advice", "What are some healthy lunchbox ideas?"),
            ("howto", "How do I set up a simple chore routine for my child?"),
            ("advice", "How much pocket money should I give?"),
            ("howto", "How can I help my child with first-day-of-school nerves?"),
            ("advice", "Which board games are good for family nights?"),
            ("explain", "How do I explain money to my child?"),
            ("plan", "Plan a birthday party for my child at home."),
        ),
        {
            "age": (
                "My daughter is four.",
                "My son is eleven.",
                "I have twins who just turned two.",
                "My teenager is fifteen.",
            ),
            "family": (
                "We're a bilingual household, Spanish and English.",
                "I'm a single dad working full time.",
                "We live in a small flat with no garden.",
            ),
            "values": (
                "We keep screen time very limited.",
                "We try to avoid sugary treats at home.",
            ),
            "needs": (
                "My son is autistic and finds sudden changes hard.",
                "My daughter has dyslexia.",
            ),
        },
        anchor="age",
    ),
    Group(
        "home_repair",
        _prompts(
            ("howto", "How do I fix a dripping tap?"),
            ("howto", "How can I make my home warmer in winter?"),
            ("howto", "How do I unclog a slow bathroom sink?"),
            ("advice", "What should I keep in a basic toolkit?"),
            ("howto", "How do I hang heavy shelves safely?"),
            ("howto", "How can I get rid of mould in the bathroom?"),
            ("howto", "How do I patch a small hole in a wall?"),
            ("advice", "How can I make a small room feel bigger?"),
            ("howto", "How do I stop a door from squeaking?"),
            ("explain", "Why does my toilet keep running, and how can I stop it?"),
            ("howto", "How do I paint a room without making a mess?"),
            ("advice", "What can I do about a draughty window?"),
        ),
        {
            "tenure": (
                "I rent, so I can't make permanent changes.",
                "I own an old Victorian house.",
                "I live in a new-build apartment.",
            ),
            "tools": (
                "I only have basic hand tools.",
                "I have a well-equipped workshop.",
            ),
            "skill": (
                "I've never done any DIY before.",
                "I'm handy and comfortable with power tools.",
            ),
            "budget": (
                "I want to keep costs under $100.",
                "I'd rather pay a little more for a lasting fix.",
            ),
            "safety": ("I have a toddler, so safety is my top priority.",),
        },
    ),
    Group(
        "pets",
        _prompts(
            ("advice", "What should I feed my pet?"),
            ("howto", "How do I keep my pet entertained while I'm at work?"),
            ("howto", "How can I help my pet lose weight?"),
            ("advice", "How do I introduce a new pet to my home?"),
            ("howto", "How do I trim my pet's nails without stress?"),
            ("explain", "How can I tell if my pet is in pain?"),
            ("advice", "How should I prepare my pet for a house move?"),
            ("howto", "How do I keep my pet calm during fireworks?"),
            ("advice", "What toys are safe for my pet?"),
            ("howto", "How can I travel with my pet by car?"),
            ("explain", "How often should my pet see a vet?"),
            ("advice", "How can I make my home more pet-friendly?"),
        ),
        {
            "animal": (
                "I have a senior beagle with stiff joints.",
                "My pet is a young, energetic border collie.",
                "I have an indoor cat who is very shy.",
                "I have two pet rabbits.",
            ),
            "home": (
                "I live in a small apartment with no outdoor space.",
                "We have a big fenced garden.",
            ),
            "schedule": (
                "I work long office hours.",
                "I work from home most days.",
            ),
            "health": (
                "My pet is on a vet-prescribed diet for kidney problems.",
                "My pet gets anxious very easily.",
            ),
        },
        anchor="animal",
    ),
    Group(
        "tech_help",
        _prompts(
            ("howto", "How do I back up my photos?"),
            ("howto", "My laptop is running slowly. What can I do?"),
            ("howto", "How do I set up a secure password system?"),
            ("advice", "Which web browser should I use?"),
            ("howto", "How can I free up storage space?"),
            ("explain", "What is two-factor authentication and should I turn it on?"),
            ("howto", "How do I connect my printer to Wi-Fi?"),
            ("howto", "How can I stop so many notifications from distracting me?"),
            ("advice", "What's a good way to organise my files and folders?"),
            ("howto", "How do I video call my family who live abroad?"),
            ("explain", "How can I tell if an email is a phishing scam?"),
            ("howto", "How do I make my home Wi-Fi faster?"),
        ),
        {
            "device": (
                "I use an old Windows 10 laptop.",
                "I'm on a MacBook.",
                "I mostly use an Android phone.",
                "I have an iPhone and an iPad.",
            ),
            "skill": (
                "I'm not comfortable with the command line.",
                "I'm a developer, so technical steps are fine.",
            ),
            "privacy": (
                "I care a lot about privacy and avoid big-tech cloud services.",
                "I don't want to pay for any subscriptions.",
            ),
            "situation": ("I'm setting this up for my 80-year-old father.",),
        },
    ),
    Group(
        "learning",
        _prompts(
            ("howto", "How should I study for an exam that's a month away?"),
            ("advice", "What's the best way to learn a new language?"),
            ("howto", "How can I remember what I read?"),
            ("plan", "Make me a study plan for learning to code."),
            ("howto", "How do I take better notes in lectures?"),
            ("advice", "How can I stop procrastinating on assignments?"),
            ("explain", "How does spaced repetition work?"),
            ("howto", "How do I write a good essay introduction?"),
            ("advice", "What are good ways to practise mental maths?"),
            ("howto", "How can I get better at public speaking for class presentations?"),
            ("advice", "How should I prepare for a maths test?"),
            ("plan", "Help me plan a weekend of revision."),
        ),
        {
            "level": (
                "I'm in my final year of high school.",
                "I'm a mature student returning to education at 40.",
                "I'm doing a master's degree.",
            ),
            "style": (
                "I learn best with flashcards and practice questions.",
                "I'm a visual learner; diagrams help me most.",
                "I study better in groups.",
            ),
            "time": (
                "I only have about thirty minutes a day to study.",
                "I work full time and study in the evenings.",
            ),
            "needs": (
                "I have ADHD and lose focus in long study sessions.",
                "I get very anxious before tests.",
            ),
        },
    ),
    Group(
        "wellbeing",
        _prompts(
            ("howto", "How can I fall asleep faster?"),
            ("advice", "What can I do to feel less stressed during the week?"),
            ("howto", "How do I build a morning routine that sticks?"),
            ("advice", "How can I drink more water during the day?"),
            ("howto", "How do I take proper breaks during a busy workday?"),
            ("advice", "What are some simple ways to feel less tired in the afternoon?"),
            ("howto", "How can I spend less time on my phone?"),
            ("advice", "How do I make time for a hobby?"),
            ("explain", "Why do I wake up feeling tired even after eight hours of sleep?"),
            ("howto", "How can I eat more vegetables without much effort?"),
            ("advice", "How can I feel less lonely after moving to a new city?"),
            ("plan", "Plan a relaxing weekend for me."),
        ),
        {
            "schedule": (
                "I work night shifts at a hospital.",
                "I'm a student with exams coming up.",
                "I'm the parent of a newborn.",
            ),
            "habits": (
                "I don't drink caffeine.",
                "I'm not a morning person at all.",
            ),
            "situation": (
                "I work from home and rarely leave the house.",
                "I live in a noisy city-centre flat.",
                "I'm an introvert who recharges alone.",
            ),
            "limits": (
                "I have chronic back pain.",
                "I don't have much money to spare.",
            ),
        },
    ),
    Group(
        "events",
        _prompts(
            ("plan", "Help me plan a birthday party."),
            ("advice", "What food should I serve at a small gathering?"),
            ("write", "Write an invitation for a get-together at my place."),
            ("advice", "What games can we play at a party?"),
            ("plan", "Plan a housewarming party for me."),
            ("howto", "How do I host a dinner without getting stressed?"),
            ("advice", "How should I decorate for a party on a budget?"),
            ("plan", "Organise a weekend picnic with friends."),
            ("write", "Write a short toast for my friend's engagement party."),
            ("advice", "What drinks should I offer guests?"),
            ("howto", "How do I plan a surprise party without the person finding out?"),
            ("advice", "What's a good theme for a party?"),
        ),
        {
            "guests": (
                "The guests are mostly ten-year-olds.",
                "It's my grandmother's 90th, with many older relatives.",
                "Most of my friends are in their twenties.",
            ),
            "diet": (
                "Half of the guests are vegan.",
                "Several guests don't drink alcohol.",
            ),
            "venue": (
                "We'll be in a small flat with neighbours who complain about noise.",
                "It will be outdoors in a public park.",
            ),
            "budget": ("I have about $150 to spend in total.",),
            "size": ("I'm expecting around thirty people.",),
        },
    ),
    Group(
        "gifts",
        _prompts(
            ("advice", "What should I buy my friend for her birthday?"),
            ("advice", "Suggest a gift for my dad."),
            ("advice", "What's a good thank-you gift for a teacher?"),
            ("advice", "Help me choose an anniversary present."),
            ("advice", "What should I get my colleague who is leaving?"),
            ("write", "Write a short message to go with a gift card."),
            ("advice", "What's a thoughtful gift for someone who has everything?"),
            ("compare", "Is it better to give experiences or physical gifts?"),
            ("advice", "What can I give my neighbour to say thanks for their help?"),
            ("howto", "How do I choose a good housewarming gift?"),
            ("advice", "Suggest some small stocking fillers for the holidays."),
            ("plan", "Help me plan gifts for my whole family this year."),
        ),
        {
            "budget": (
                "My budget is about $30 per person.",
                "I can spend up to $200.",
                "I'd rather make something by hand than spend money.",
            ),
            "recipient": (
                "The person loves gardening and cooking.",
                "They are a huge football fan.",
                "They read a lot of crime novels.",
            ),
            "values": (
                "I prefer sustainable, second-hand or plastic-free gifts.",
                "I want something useful, not clutter.",
            ),
            "logistics": (
                "I need to send it by post overseas.",
                "I'm shopping at the last minute.",
            ),
        },
    ),
    Group(
        "workplace",
        _prompts(
            ("write", "Write an email asking my team for project updates."),
            ("advice", "How should I run a productive meeting?"),
            ("howto", "How do I give feedback to a colleague who misses deadlines?"),
            ("write", "Write a short message declining a meeting invite."),
            ("advice", "How can I manage my workload when everything feels urgent?"),
            ("howto", "How do I handle a disagreement with my manager?"),
            ("write", "Write a thank-you note to a colleague who helped me."),
            ("advice", "How do I onboard a new team member well?"),
            ("howto", "How can I say no to extra work politely?"),
            ("write", "Write a status update about a delayed project."),
            ("advice", "How do I make a good impression when presenting to senior leaders?"),
            ("howto", "How do I write a clear handover document before my holiday?"),
        ),
        {
            "role": (
                "I manage a small team of five.",
                "I'm the most junior person on my team.",
                "I'm a freelancer working with several clients.",
            ),
            "culture": (
                "My company culture is very formal.",
                "We're a relaxed start-up that uses first names and emoji.",
                "I work with colleagues in Japan and want to be culturally respectful.",
            ),
            "situation": (
                "English is not the first language of most of my colleagues.",
                "Everything at my company happens over chat rather than email.",
            ),
            "personality": ("I avoid conflict and find it hard to be direct.",),
        },
    ),
)

# ============================================================================================
# Prompt-independent prompts and style items
# ============================================================================================

INDEPENDENT_PROMPTS: tuple[Prompt, ...] = _prompts(
    ("explain", "Explain how vaccines train the immune system."),
    ("explain", "Why is the sky blue?"),
    ("explain", "How do solar panels turn sunlight into electricity?"),
    ("explain", "What causes inflation?"),
    ("explain", "Explain what a black hole is."),
    ("explain", "How does data travel across the internet?"),
    ("explain", "What is machine learning?"),
    ("explain", "Why do we have seasons?"),
    ("explain", "How do noise-cancelling headphones work?"),
    ("explain", "What was the Industrial Revolution and why did it matter?"),
    ("explain", "Explain the difference between weather and climate."),
    ("explain", "How do bees make honey?"),
    ("explain", "What is a blockchain, in plain terms?"),
    ("explain", "Why do cats purr?"),
    ("explain", "How does a bill become a law?"),
    ("explain", "What is the placebo effect?"),
    ("explain", "How do airplanes stay in the air?"),
    ("explain", "What is photosynthesis?"),
    ("explain", "How does GPS know where I am?"),
    ("explain", "What is the difference between a virus and a bacterium?"),
    ("explain", "Why does bread go stale?"),
    ("explain", "What is opportunity cost?"),
    ("explain", "How do tides work?"),
    ("explain", "Explain what DNA does."),
    ("explain", "How does plastic recycling actually work?"),
    ("write", "Write a short poem about the first snow of winter."),
    ("write", "Write a birthday message for my best friend."),
    ("write", "Write a short story about a lost umbrella."),
    ("write", "Write a product description for a handmade ceramic mug."),
    ("write", "Write an apology message to a friend for missing her party."),
    ("write", "Write a short speech to welcome people to a community meeting."),
    ("write", "Write a review of a café I enjoyed."),
    ("write", "Write a note to my neighbour about a parcel I took in for them."),
    ("write", "Write a haiku about Monday mornings."),
    ("write", "Write a short bio for my personal website."),
    ("write", "Write a motivational message for a friend running a marathon."),
    ("write", "Write a limerick about a forgetful cat."),
    ("write", "Write a farewell message for a coworker who is retiring."),
    ("compare", "Compare electric cars and petrol cars."),
    ("compare", "What are the pros and cons of working from home?"),
    ("compare", "Should I learn Python or JavaScript first?"),
    ("compare", "Compare reading e-books and paper books."),
    ("compare", "Is it better to exercise in the morning or the evening?"),
    ("compare", "Tea or coffee: which is better for me?"),
    ("compare", "Is it better to rent a car or use public transport on holiday?"),
    ("compare", "Compare living in a big city and living in a small town."),
    ("compare", "Should I buy a laptop or a tablet?"),
    ("compare", "What's better for taking notes, paper or a notes app?"),
    ("howto", "How do I become a better listener?"),
    ("howto", "How can I make small talk with strangers?"),
    ("advice", "Give me tips for writing clear emails."),
    ("howto", "How do I start journaling?"),
    ("howto", "How can I improve my handwriting?"),
    ("advice", "How do I pick a good book to read next?"),
    ("advice", "How can I be more productive in the mornings?"),
    ("advice", "What are some fun hobbies to try this year?"),
    ("advice", "How do I make a decision when I'm stuck between two options?"),
    ("howto", "How can I reduce my household waste?"),
    ("howto", "How do I start learning to draw?"),
    ("howto", "How do I remember people's names?"),
    ("howto", "How do I build a new habit?"),
    ("advice", "How can I keep in touch with old friends?"),
    ("howto", "How do I get better at chess?"),
    ("howto", "How can I save energy at home?"),
    ("howto", "How do I write a good summary of a long article?"),
    ("advice", "What are some ways to be more creative?"),
    ("howto", "How do I apologise sincerely?"),
    ("howto", "How can I get better at estimating how long tasks take?"),
    ("howto", "How do I start a podcast?"),
    ("howto", "How do I organise a messy wardrobe?"),
    ("advice", "What are good ways to learn about a new topic quickly?"),
    ("howto", "How can I make a presentation more engaging?"),
    ("advice", "How do I deal with a friend who is always late?"),
    ("howto", "How do I learn to touch-type?"),
    ("howto", "How can I make my writing less wordy?"),
    ("plan", "Plan a productive Saturday for me."),
    ("plan", "Help me plan a reading challenge for the year."),
    ("plan", "Make a plan to declutter my home in a month."),
)

_NOT_WRITING = frozenset(KINDS) - {"write"}
_PROCESS_KINDS = frozenset({"howto", "plan", "advice"})


def _item(text: str, *tags: str, kinds: frozenset[str] = frozenset(KINDS)) -> Item:
    return Item(text, frozenset(tags), kinds)


# Prompt-independent preference items (seed 004, sec. 5.3: Multifaceted-Bench's style,
# background-knowledge and informativeness dimensions, stated by the user).
STYLE_ITEMS: tuple[Item, ...] = (
    # tone
    _item("I like a warm, encouraging tone.", "tone"),
    _item("Please be direct and skip the pleasantries.", "tone"),
    _item("A bit of light humour is welcome.", "tone"),
    _item("Keep the tone calm and reassuring; I worry easily.", "tone"),
    _item("Sound professional rather than chatty.", "tone"),
    _item("Use a friendly, casual voice, as if talking to a friend.", "tone"),
    _item("Be honest about downsides instead of only cheering me on.", "tone", kinds=_NOT_WRITING),
    _item("I like an enthusiastic, upbeat style.", "tone"),
    _item("I prefer a heartfelt, sincere voice.", "tone", kinds=frozenset({"write"})),
    # length, stated loosely (not verifiable)
    _item("I prefer short answers that get straight to the point.", "length"),
    _item("I like thorough, detailed explanations.", "length", kinds=_NOT_WRITING),
    _item("Keep it brief; I usually read on my phone.", "length"),
    _item("Give me the key takeaway first and the details after.", "opening", kinds=_NOT_WRITING),
    # format
    _item("I like information broken into bullet points.", "layout", kinds=_NOT_WRITING),
    _item(
        "Use numbered steps when describing a process.", "layout", "digits", kinds=_PROCESS_KINDS
    ),
    _item("I prefer flowing prose over lists.", "layout"),
    _item("Bold the most important terms.", "emphasis", kinds=_NOT_WRITING),
    _item("Use short headings to separate the sections.", "layout", "opening", kinds=_NOT_WRITING),
    _item("Put a one-line summary at the very top.", "opening", kinds=_NOT_WRITING),
    # expertise
    _item("I'm a complete beginner, so please avoid jargon.", "expertise", kinds=_NOT_WRITING),
    _item("I have a technical background; precise terminology is fine.", "expertise"),
    _item("Explain things as you would to a curious twelve-year-old.", "expertise"),
    _item("I already know the basics, so skip the introductions.", "expertise", kinds=_NOT_WRITING),
    _item("English is my second language, so please use simple words.", "expertise"),
    _item("I'm a university student and like some depth.", "expertise", kinds=_NOT_WRITING),
    # approach
    _item("I learn best from concrete examples.", "approach", kinds=_NOT_WRITING),
    _item("Analogies from everyday life help me understand.", "approach", kinds=_NOT_WRITING),
    _item("Tell me why, not just what.", "approach", kinds=_NOT_WRITING),
    _item("Point out common mistakes to avoid.", "approach", kinds=_PROCESS_KINDS),
    _item("Show me both sides before giving a recommendation.", "approach", kinds=_NOT_WRITING),
    _item("I like a little historical background.", "approach", kinds=frozenset({"explain"})),
    _item("Suggest one small thing I can do today.", "approach", kinds=_PROCESS_KINDS),
    _item(
        "Please avoid clichés and make it feel personal.", "approach", kinds=frozenset({"write"})
    ),
    _item(
        "I like writing that sounds natural, not flowery.", "approach", kinds=frozenset({"write"})
    ),
)

# ============================================================================================
# Verifiable items: phrasings per constraint type (see mipo_engine/judging/constraints.py)
# ============================================================================================


@dataclass(frozen=True)
class VerifiableTemplate:
    """Phrasings of one constraint type; ``{value}`` is filled from ``values``."""

    constraint: str
    phrasings: tuple[str, ...]
    values: tuple[str, ...]
    tags: frozenset[str]
    kinds: frozenset[str] = frozenset(KINDS)

    def draw(self, rng: random.Random) -> Item:
        text = rng.choice(self.phrasings).format(value=rng.choice(self.values))
        return Item(text, self.tags, self.kinds)


def _template(
    constraint: str,
    phrasings: tuple[str, ...],
    values: tuple[str, ...] = ("",),
    *,
    tags: tuple[str, ...],
    kinds: frozenset[str] = frozenset(KINDS),
) -> VerifiableTemplate:
    return VerifiableTemplate(constraint, phrasings, values, frozenset(tags), kinds)


VERIFIABLE_TEMPLATES: tuple[VerifiableTemplate, ...] = (
    _template(
        "max_words",
        (
            "Keep the whole answer to at most {value} words.",
            "Please use no more than {value} words; I read on my phone.",
            "I skim, so at most {value} words please.",
        ),
        ("40", "50", "60", "80", "100", "120"),
        tags=("length",),
    ),
    _template(
        "min_words",
        (
            "Write at least {value} words so I get the full picture.",
            "I want depth: at least {value} words.",
        ),
        ("120", "150", "200"),
        tags=("length",),
        kinds=_NOT_WRITING,
    ),
    _template(
        "max_sentences",
        ("Answer in at most {value} sentences.", "No more than {value} sentences, please."),
        ("2", "3", "4", "5"),
        tags=("length", "layout"),
        kinds=_NOT_WRITING,
    ),
    _template(
        "exact_bullets",
        ("Use exactly {value} bullet points.", "Give me exactly {value} bullet points I can skim."),
        ("3", "4", "5"),
        tags=("layout",),
        kinds=_NOT_WRITING,
    ),
    _template(
        "no_bullets",
        (
            "Do not use bullet points or lists; I prefer plain paragraphs.",
            "Please don't use bullet points; write it as a normal message.",
        ),
        tags=("layout",),
    ),
    _template(
        "exact_paragraphs",
        (
            "Write exactly {value} paragraphs, separated by blank lines.",
            "Structure it as exactly {value} paragraphs with a blank line between them.",
        ),
        ("2", "3"),
        # a postscript would be one more paragraph
        tags=("layout", "length", "paragraphs"),
        kinds=_NOT_WRITING,
    ),
    _template(
        "forbidden_word",
        (
            'Do not use the word "{value}".',
            'Never use the word "{value}"; it is a pet peeve of mine.',
            'Avoid the word "{value}" entirely.',
        ),
        ("basically", "very", "just", "actually", "really", "simply", "obviously", "stuff"),
        tags=("forbidden-word",),
    ),
    _template(
        "required_word",
        (
            'Include the word "{value}" somewhere in your answer.',
            'Please include the word "{value}" at least once.',
        ),
        ("example", "because", "tip", "important", "remember", "today"),
        tags=("required-word",),
    ),
    _template(
        "starts_with_word",
        (
            'Start your response with the word "{value}".',
            'Begin your reply with the word "{value}".',
        ),
        ("Okay", "Here", "Sure", "Alright", "Great"),
        tags=("opening",),
        kinds=_NOT_WRITING,
    ),
    _template(
        "ends_with_question",
        (
            "End your response with a question that helps me take the next step.",
            "End your answer with a follow-up question for me.",
        ),
        tags=("ending",),
    ),
    _template(
        "ends_with_phrase",
        (
            'End your response with the exact phrase "{value}"',
            'Please end the reply with the phrase "{value}"',
        ),
        ("Good luck!", "Hope this helps.", "You've got this!", "Enjoy!", "Take care."),
        tags=("ending",),
    ),
    _template(
        "all_lowercase",
        (
            "Write everything in lowercase letters, with no capitals at all.",
            "Please type the whole reply in lowercase; capitals feel like shouting to me.",
        ),
        tags=("case",),
    ),
    _template(
        "no_commas",
        (
            "Do not use any commas in your answer.",
            "Please don't use commas at all; short sentences read better for me.",
        ),
        tags=("punctuation",),
    ),
    _template(
        "title_heading",
        (
            "Start with a title formatted as a markdown heading.",
            "Give the answer a title on the first line as a markdown heading.",
        ),
        tags=("opening",),
        kinds=_NOT_WRITING,
    ),
    _template(
        "postscript",
        (
            'Add a postscript starting with "P.S." at the very end.',
            'Finish with a short postscript that begins with "P.S."',
        ),
        tags=("ending", "paragraphs"),
    ),
    _template(
        "no_digits",
        (
            "Spell out all numbers in words instead of using digits.",
            "Write out numbers in words; my screen reader handles digits badly.",
        ),
        tags=("digits",),
    ),
)

# ============================================================================================
# General prompts (task "general", no context)
# ============================================================================================

GENERAL_PROMPTS: tuple[str, ...] = (
    "What is the capital of Australia, and why isn't it Sydney?",
    "Summarise the plot of Romeo and Juliet.",
    "Explain how a refrigerator keeps food cold.",
    "Give three tips for a good night's sleep.",
    "What is the difference between a simile and a metaphor?",
    "How do you calculate the area of a circle?",
    "Write a short thank-you note to a bus driver.",
    "Why do leaves change colour in autumn?",
    "What were the main causes of the French Revolution?",
    "How does a credit card differ from a debit card?",
    "Explain what an API is.",
    "What is the water cycle?",
    "How do I convert Celsius to Fahrenheit?",
    "Write a four-line poem about the ocean.",
    "What makes a good password?",
    "Why is exercise good for the brain?",
    "What is the difference between affect and effect?",
    "Describe how a rainbow forms.",
    "What are prime numbers?",
    "Name some ways to reduce food waste.",
    "Explain supply and demand.",
    "What does the heart do in the body?",
    "How does a compass work?",
    "Write a short description of a busy market.",
    "What is a haiku?",
    "Why do we yawn?",
    "Explain what a percentage is with an example.",
    "What are the planets in our solar system?",
    "How do volcanoes erupt?",
    "What is the greenhouse effect?",
    "Write a one-paragraph story about a robot learning to paint.",
    "What is the difference between speed and velocity?",
    "How do you make a good cup of tea?",
    "Explain the basic rules of chess.",
    "What does a librarian do?",
    "How are new medicines tested before approval?",
    "Why do onions make people cry?",
    "What is an ecosystem?",
    "Give an example of a persuasive opening sentence for an essay.",
    "How do earthquakes happen?",
    "What is the Pythagorean theorem?",
    "How does the stock market work?",
    "What are renewable energy sources?",
    "Explain what a fraction is to a child.",
    "Write a short slogan for a bicycle shop.",
    "What is the difference between a lake and a pond?",
    "How does sound travel?",
    "What is democracy?",
    "Why is sleep important for memory?",
    "How do I write a formal letter?",
    "What are the benefits of learning a second language?",
    "How does a microwave oven heat food?",
    "What is a food chain?",
    "Describe the taste of a lemon to someone who has never had one.",
    "What causes thunder?",
    "How do I make a simple paper airplane?",
    "What are the three states of matter?",
    "Write a riddle about a clock.",
    "What is the purpose of a museum?",
    "Explain how interest on a loan works.",
    "What is the tallest mountain in the world, and how tall is it?",
    "How do fish breathe underwater?",
    "What is an adjective? Give a few examples.",
    "How should I store fresh herbs?",
    "What are the main parts of a plant?",
    "Write a short weather forecast for a sunny day.",
    "Why do governments collect taxes?",
    "How fast does light travel?",
    "How do you tie a bowline knot?",
    "Explain what a website domain is.",
    "What happens when you mix baking soda and vinegar?",
    "What is the difference between a hurricane and a tornado?",
    "Give a short history of the printing press.",
    "How do birds know where to migrate?",
    "What is a balanced diet?",
    "Write an opening line for a mystery novel.",
    "How do a bicycle's gears help when riding uphill?",
    "What do the lungs do?",
    "What are some good habits for keeping a tidy desk?",
    "How do magnets work?",
    "Explain what an election is.",
    "What is the boiling point of water, and does it change with altitude?",
    "How can I tell if an egg is still fresh?",
    "What is a noun?",
    "Describe the life cycle of a butterfly.",
    "Why is the ocean salty?",
    "How do you find the average of a set of numbers?",
    "What is a calorie?",
    "Write a short invitation to a book club meeting.",
    "What are the signs of dehydration?",
    "How do glasses help people see better?",
    "Why does recycling matter?",
    "Explain what gravity is.",
    "What is the difference between a town and a city?",
    "How do I measure a room for new flooring?",
    "What are some classic novels worth reading?",
    "How does a thermometer work?",
    "What is an anagram? Give two examples.",
    "Explain how a seed grows into a plant.",
    "What is the moon made of?",
)

# ============================================================================================
# Assembly
# ============================================================================================


def _compatible(candidate: Item, chosen: list[Item], kind: str) -> bool:
    """An item fits a row when it suits the prompt kind and shares no tag with chosen items."""
    if kind not in candidate.kinds:
        return False
    return all(not (candidate.tags & item.tags) for item in chosen)


def _group_items(group: Group, rng: random.Random) -> list[Item]:
    """One or two circumstance items from distinct sub-dimensions (the anchor always first)."""
    subdims = list(group.items)
    count = rng.choice((1, 2))
    picked: list[str] = []
    if group.anchor is not None:
        picked.append(group.anchor)
    others = [name for name in subdims if name not in picked]
    rng.shuffle(others)
    picked.extend(others[: max(0, count - len(picked))])
    return [
        Item(rng.choice(group.items[name]), frozenset({f"{group.name}:{name}"})) for name in picked
    ]


def _style_items(kind: str, count: int, chosen: list[Item], rng: random.Random) -> list[Item]:
    added: list[Item] = []
    pool = list(STYLE_ITEMS)
    rng.shuffle(pool)
    for candidate in pool:
        if len(added) == count:
            break
        if _compatible(candidate, chosen + added, kind):
            added.append(candidate)
    return added


class VerifiableDealer:
    """Hands out verifiable items round-robin over types, so every type is well represented."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._queue: list[VerifiableTemplate] = []

    def _refill(self) -> None:
        order = list(VERIFIABLE_TEMPLATES)
        self._rng.shuffle(order)
        self._queue.extend(order)

    def deal(self, kind: str, chosen: list[Item]) -> Item:
        if len(self._queue) < len(VERIFIABLE_TEMPLATES):
            self._refill()
        for position, template in enumerate(self._queue):
            if kind in template.kinds and all(not (template.tags & i.tags) for i in chosen):
                del self._queue[position]
                return template.draw(self._rng)
        raise RuntimeError(f"no verifiable item fits a {kind!r} prompt with {chosen}")


@dataclass
class Draft:
    """A personalization row before ids are assigned."""

    prompt: Prompt
    group: str | None
    items: list[Item]


def _verifiable_counts(total: int, rng: random.Random) -> list[int]:
    """How many verifiable items each row gets: a fixed share gets one, a smaller share two."""
    doubles = round(DOUBLE_VERIFIABLE_SHARE * total)
    singles = round(VERIFIABLE_SHARE * total) - doubles
    counts = [2] * doubles + [1] * singles + [0] * (total - doubles - singles)
    rng.shuffle(counts)
    return counts


def build_drafts(rng: random.Random) -> list[Draft]:
    slots: list[tuple[Prompt, Group | None]] = [
        (prompt, group) for group in GROUPS for prompt in group.prompts
    ]
    slots += [(prompt, None) for prompt in INDEPENDENT_PROMPTS for _ in range(2)]
    counts = _verifiable_counts(len(slots), rng)
    dealer = VerifiableDealer(rng)
    drafts: list[Draft] = []
    # Contexts are unique within their pool (a group, or all prompt-independent rows), so a
    # random other context drawn from the pool always differs from the row's own.
    contexts_by_pool: dict[str | None, set[tuple[str, ...]]] = {}
    for (prompt, group), verifiable_count in zip(slots, counts, strict=True):
        seen = contexts_by_pool.setdefault(None if group is None else group.name, set())
        while True:
            items = _compose(prompt, group, verifiable_count, dealer, rng)
            key = tuple(item.text for item in items)
            if key not in seen:
                break
        seen.add(key)
        drafts.append(Draft(prompt, None if group is None else group.name, items))
    return drafts


def _compose(
    prompt: Prompt,
    group: Group | None,
    verifiable_count: int,
    dealer: VerifiableDealer,
    rng: random.Random,
) -> list[Item]:
    """The preference items of one row: circumstances or style, then verifiable items."""
    if group is not None:
        items = _group_items(group, rng)
        room_for_style = len(items) + verifiable_count < 4
        if room_for_style and rng.random() < STYLE_IN_GROUP_ROW_PROBABILITY:
            items += _style_items(prompt.kind, 1, items, rng)
    else:
        lowest = 0 if verifiable_count else 1
        items = _style_items(prompt.kind, rng.randint(lowest, 2), [], rng)
    for _ in range(verifiable_count):
        items.append(dealer.deal(prompt.kind, items))
    return items


def _check_item_classification(drafts: list[Draft]) -> None:
    """Verifiable templates must be recognised by the checker, and nothing else may be."""
    for draft in drafts:
        assert 1 <= len(draft.items) <= 4, draft
        for item in draft.items:
            found = constraint_type(item.text)
            intended = _intended_constraint(item)
            assert found == intended, (item.text, found, intended)


def _intended_constraint(item: Item) -> str | None:
    for template in VERIFIABLE_TEMPLATES:
        if item.tags == template.tags and any(
            _matches_phrasing(item.text, phrasing, template.values)
            for phrasing in template.phrasings
        ):
            return template.constraint
    return None


def _matches_phrasing(text: str, phrasing: str, values: tuple[str, ...]) -> bool:
    return any(phrasing.format(value=value) == text for value in values)


def personalization_rows(drafts: list[Draft], rng: random.Random) -> list[dict[str, object]]:
    order = list(range(len(drafts)))
    rng.shuffle(order)  # mix groups so the first rows of the file are a fair sample
    rows = []
    for number, index in enumerate(order, start=1):
        draft = drafts[index]
        texts = [item.text for item in draft.items]
        rows.append(
            {
                "id": f"pers-{number:04d}",
                "prompt": draft.prompt.text,
                "context": " ".join(texts),
                "context_items": texts,
                "context_group": draft.group,
                "task": "personalization",
                "answer": None,
                "choices": None,
                "source": "builtin:personalization",
            }
        )
    return rows


def heldout_ids(rows: list[dict[str, object]], rng: random.Random) -> list[str]:
    """About 20% of rows, held out by prompt (all rows of a held-out prompt), per group."""
    prompts_by_stratum: dict[str, list[str]] = {}
    for row in rows:
        stratum = str(row["context_group"] or "(independent)")
        prompts = prompts_by_stratum.setdefault(stratum, [])
        if row["prompt"] not in prompts:
            prompts.append(str(row["prompt"]))
    held_prompts: set[str] = set()
    for stratum in sorted(prompts_by_stratum):
        prompts = sorted(prompts_by_stratum[stratum])
        rng.shuffle(prompts)
        held_prompts.update(prompts[: max(1, round(HELDOUT_SHARE * len(prompts)))])
    return sorted(str(row["id"]) for row in rows if row["prompt"] in held_prompts)


DEV_SEED = 0
DEV_VERIFIABLE_ROWS = 40


def dev_ids(rows: list[dict[str, object]], held: list[str]) -> list[str]:
    """Training rows on which settings are chosen: all rows of randomly drawn training
    prompts, drawn until at least ``DEV_VERIFIABLE_ROWS`` of them have a verifiable item."""
    held_set = set(held)
    training = [row for row in rows if row["id"] not in held_set]
    prompts = sorted({str(row["prompt"]) for row in training})
    random.Random(DEV_SEED).shuffle(prompts)
    chosen: set[str] = set()
    verifiable = 0
    for prompt in prompts:
        if verifiable >= DEV_VERIFIABLE_ROWS:
            break
        chosen.add(prompt)
        verifiable += sum(
            any(constraint_type(t) for t in row["context_items"])  # type: ignore[union-attr]
            for row in training
            if row["prompt"] == prompt
        )
    return sorted(str(row["id"]) for row in training if row["prompt"] in chosen)


def general_rows() -> list[dict[str, object]]:
    return [
        {
            "id": f"gen-{number:04d}",
            "prompt": prompt,
            "context": None,
            "context_items": None,
            "context_group": None,
            "task": "general",
            "answer": None,
            "choices": None,
            "source": "builtin:general",
        }
        for number, prompt in enumerate(GENERAL_PROMPTS, start=1)
    ]


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    rng = random.Random(SEED)
    all_prompts = [p.text for g in GROUPS for p in g.prompts] + [
        p.text for p in INDEPENDENT_PROMPTS
    ]
    assert len(set(all_prompts)) == len(all_prompts), "duplicate personalization prompt"
    assert not set(all_prompts) & set(GENERAL_PROMPTS), "prompt in both sets"
    assert len(set(GENERAL_PROMPTS)) == len(GENERAL_PROMPTS), "duplicate general prompt"
    drafts = build_drafts(rng)
    _check_item_classification(drafts)
    rows = personalization_rows(drafts, rng)
    _write_jsonl(DATA_DIR / "personalization.jsonl", rows)
    held = heldout_ids(rows, rng)
    (DATA_DIR / "personalization_heldout_ids.txt").write_text("\n".join(held) + "\n")
    dev = dev_ids(rows, held)
    (DATA_DIR / "personalization_dev_ids.txt").write_text("\n".join(dev) + "\n")
    _write_jsonl(DATA_DIR / "general.jsonl", general_rows())
    verifiable = sum(any(constraint_type(t) for t in r["context_items"]) for r in rows)
    print(
        f"personalization: {len(rows)} rows, {verifiable} with a verifiable item, "
        f"{len(held)} held out, {len(dev)} dev; general: {len(GENERAL_PROMPTS)} rows"
    )


if __name__ == "__main__":
    main()
