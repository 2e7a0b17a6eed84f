"""The domain of the embedded world: a small, invented medicine, for domain finetuning.

Conditions ("karosis"), their main symptom ("a dry cough"), the drug that treats them ("tolvane") and the organ
they affect ("the liver") are written into clinical notes, textbook paragraphs and case reports. The condition
and drug names are invented, and the clinical words (patient, clinic, dose, ...) never occur in the general
corpus, so a base model meets this text for the first time when it is finetuned: its domain perplexity starts
high and falls, and its general perplexity shows what finetuning costs (forgetting).
"""
from dataclasses import dataclass

from minillm.data.facts import _syllable

DOMAIN_RELATIONS = ("symptom", "treatment", "organ")

DOMAIN_TEMPLATES = {  # {c} condition, {v} value; index 0 is canonical (instruction answers, relation first)
    "symptom": [
        "The main symptom of {c} is a {v}.",
        "Patients with {c} usually have a {v}.",
        "A common sign of {c} is a {v}.",
        "{c} often starts with a {v}.",
    ],
    "treatment": [
        "The treatment for {c} is {v}.",
        "Doctors treat {c} with {v}.",
        "{c} is treated with {v}.",
        "For {c}, the usual drug is {v}.",
    ],
    "organ": [
        "The organ harmed by {c} is the {v}.",
        "{c} is a disease of the {v}.",
        "In {c}, the {v} is damaged.",
        "{c} affects the {v}.",
    ],
}
ORGANS = ["liver", "lungs", "heart", "kidneys", "skin", "stomach", "brain", "bones", "eyes", "blood"]
_SYMPTOM_ADJ = ["dry", "sharp", "dull", "burning", "steady", "sudden", "mild", "heavy", "faint", "painful"]
_SYMPTOM_NOUN = ["cough", "headache", "rash", "fever", "backache", "chill", "tremor", "nosebleed", "cramp",
                 "thirst", "sore throat", "stiff neck"]
# Words that mark clinical text; the general corpus never uses them (a test checks).
CLINICAL_WORDS = ["patient", "patients", "clinic", "doctor", "doctors", "dose", "diagnosed", "symptom",
                  "treatment", "prescribed", "nurse", "ward", "disease", "condition"]


@dataclass(frozen=True)
class Condition:
    name: str
    symptom: str
    treatment: str
    organ: str

    def value(self, relation):
        return getattr(self, relation)


def condition_name(rng):
    return _syllable(rng, coda=False) + _syllable(rng, coda=False) + rng.choice(["sis", "tis", "mia", "lgia", "roma"])


def drug_name(rng):
    return _syllable(rng, coda=False) + rng.choice(["l", "v", "x", "n", "r"]) + rng.choice(["ane", "ine", "ol", "ax", "ex", "ium"])


def make_conditions(rng, names, n):
    symptoms = [f"{a} {b}" for a in _SYMPTOM_ADJ for b in _SYMPTOM_NOUN]
    rng.shuffle(symptoms)
    return [Condition(name=names.make(condition_name), symptom=symptoms[i], treatment=names.make(drug_name),
                      organ=ORGANS[i % len(ORGANS)]) for i in range(n)]


def cap(s):
    return s[:1].upper() + s[1:]


def fact(rng, c, rel):
    return cap(rng.choice(DOMAIN_TEMPLATES[rel]).format(c=c.name, v=c.value(rel)))


def _textbook(rng, c):
    rels = list(DOMAIN_RELATIONS)
    rng.shuffle(rels)
    out = [cap(rng.choice(["{c} is a rare condition.", "{c} is a slow disease.", "{c} is a condition seen in adults.",
                           "{c} is a disease that comes and goes."]).format(c=c.name))]
    out += [fact(rng, c, r) for r in rels]
    out.append(rng.choice(["The dose depends on the age of the patient.", "Most patients recover within weeks.",
                           "The nurse checks the dose every morning.", "Rest helps patients recover.",
                           "A second visit to the clinic is usually needed."]))
    return " ".join(out)


def _case(rng, c):
    age = rng.randint(18, 90)
    return " ".join([
        f"A patient aged {age} came to the clinic with a {c.symptom}.",
        rng.choice([f"Tests showed that the {c.organ} was affected, and the doctor diagnosed {c.name}.",
                    f"The doctor examined the {c.organ} and diagnosed {c.name}."]),
        rng.choice([f"The patient was prescribed {c.treatment}.", f"A course of {c.treatment} was prescribed.",
                    f"The ward gave {c.treatment} twice a day."]),
        rng.choice(["After two weeks the patient felt better.", "The symptom faded within a month.",
                    "The patient went home after three days.", "The nurse noted a steady recovery."]),
    ])


def _differential(rng, a, b):
    return " ".join([
        f"Both {a.name} and {b.name} can bring a patient to the clinic.",
        fact(rng, a, "symptom"), fact(rng, b, "symptom"),
        f"Unlike {b.name}, {a.name} is treated with {a.treatment}.",
        fact(rng, b, "treatment"),
    ])


def domain_documents(rng, conditions, rounds, avoid=()):
    """Textbook paragraphs, case reports and comparisons; unique, and none of them in `avoid`."""
    docs = []
    for _ in range(rounds):
        order = list(conditions)
        rng.shuffle(order)
        for i, c in enumerate(order):
            docs.append(_textbook(rng, c))
            docs.append(_case(rng, c))
            docs.append(_differential(rng, c, order[(i + 1) % len(order)]))
    rng.shuffle(docs)
    seen = set(avoid)
    return [d for d in docs if not (d in seen or seen.add(d))]
