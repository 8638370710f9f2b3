"""JSON output in a format given by a pydantic model (or a regex), on a local server.

Start the server first: python -m sglang.launch_server --port 30000
"""

import argparse
from enum import Enum

from pydantic import BaseModel
from readme_examples import character_gen  # the regex example of the seed page

import sglang as sgl


class Weapon(str, Enum):
    sword = "sword"
    axe = "axe"
    mace = "mace"
    spear = "spear"
    bow = "bow"
    crossbow = "crossbow"


class Wizard(BaseModel):
    name: str
    age: int
    weapon: Weapon


@sgl.function
def pydantic_wizard_gen(s):
    s += "Give me a description about a wizard in the JSON format.\n"
    s += sgl.gen("character", max_tokens=128, temperature=0, json_schema=Wizard)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://localhost:30000")
    args = parser.parse_args()
    sgl.set_default_backend(sgl.RuntimeEndpoint(args.url))

    state = character_gen.run(name="Hermione Granger", temperature=0)
    print(state["json_output"])

    state = pydantic_wizard_gen.run()
    print(Wizard.model_validate_json(state["character"]))
