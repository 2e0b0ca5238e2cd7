"""A short plain-English corpus written for steerlens, and fixed-length token windows cut from it.

The paragraphs are original prose with names, places and words that recur within a paragraph, which is what
copy suppression acts on: a token seen earlier that the model is tempted to predict again.
"""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor

from steerlens.errors import EmptyInput

from .decompose import LensModel, tokenizer_of

PARAGRAPHS: tuple[str, ...] = (
    "Martha kept bees behind the old mill. Every spring Martha opened the hives and counted the frames, and "
    "every spring the bees were calmer than she expected. Her neighbour Thomas thought the bees were dangerous, "
    "but Thomas also bought a jar of honey from Martha every Saturday, so he never complained for long.",
    "The river town of Eastwick had two bridges, a stone bridge and an iron bridge. Children crossed the stone "
    "bridge on the way to school because the iron bridge was noisy. When the iron bridge was closed for repairs, "
    "the stone bridge became so crowded that the mayor of Eastwick asked the school to start later.",
    "Daniel wrote letters to his sister Clara every week. Clara lived by the sea and answered with long letters "
    "about storms, boats and the lighthouse. Daniel kept every letter in a wooden box. When the box was full, "
    "Clara sent him a second box, painted blue, with a small lighthouse on the lid.",
    "The library on Garden Street opened at nine. Ruth, the librarian, arrived at eight to water the plants and "
    "sort the returned books. Most mornings the first visitor was an old man who read the newspaper, folded the "
    "newspaper carefully, and left it on the desk for Ruth to read at lunch.",
    "A baker named Oliver sold bread, rolls and one kind of cake. People asked Oliver for more cakes, but he "
    "said one good cake was better than ten ordinary cakes. On the day he finally baked a second cake, the line "
    "outside the bakery reached the corner, and Oliver sold both cakes before noon.",
    "The museum held a small painting of a green door. Visitors walked past larger paintings to stand in front "
    "of the green door. A guide named Henry liked to ask them what was behind the door. Some said a garden, some "
    "said a kitchen, and one child said another green door.",
    "Sophie and her brother Max built a raft from planks and rope. The raft floated for ten minutes before the "
    "rope slipped. Max swam to the bank with one plank, Sophie swam back with the rope, and the rest of the raft "
    "drifted slowly down the river toward the village.",
    "In the mountains the weather changed quickly. A clear morning could turn into snow by the afternoon, and the "
    "snow could melt by evening. Climbers learned to carry a coat even in summer. The guide, Peter, carried two "
    "coats, because someone always forgot theirs.",
    "Lucy trained her dog to fetch the newspaper. The dog fetched the newspaper, then the neighbour's newspaper, "
    "then every newspaper on the street. Lucy spent a week returning newspapers and apologising. After that the "
    "dog was trained to fetch only the ball, which it did with great pride.",
    "The train from Northfield to Southport stopped at every village. Passengers complained that the train was "
    "slow, but the train was never late. A retired teacher named Agnes rode the train every Tuesday, and she said "
    "the villages were the reason she rode it at all.",
    "George repaired clocks in a narrow shop. Every wall of the shop was covered with clocks, and every clock "
    "showed a slightly different time. Customers asked George which clock was right. George smiled and said the "
    "right clock was the one on their own wrist, if they had wound it.",
    "The garden had three apple trees and one pear tree. The apple trees gave more fruit than the family could "
    "eat, so Anna made apple juice, apple pie and apple jam. The pear tree gave exactly four pears a year, and "
    "Anna ate all four herself, slowly, on the back step.",
    "A small ship carried salt along the coast. The captain, Edward, had carried salt for twenty years. When a "
    "merchant asked Edward to carry glass instead, Edward refused, because glass broke and salt did not. The "
    "merchant found another ship, and that ship arrived with broken glass.",
    "Emma practised the piano every evening after dinner. Her father listened from the kitchen while he washed "
    "the plates. When Emma played the same piece for a month, her father began to whistle it while he washed "
    "the plates, and soon the whole house knew the piece by heart.",
    "The village council met in the hall on the first Monday of each month. Most meetings were short. The longest "
    "meeting in memory was about a single tree in the square. Some wanted the tree cut down, others wanted a "
    "bench around the tree, and in the end the council voted for the bench.",
    "Jack found an old map in the attic. The map showed the farm, the river and a cross near the river. Jack "
    "and his cousin Sam dug near the river for three days. They found a rusty spoon, a broken cup and, on the "
    "last day, a tin box holding another map.",
    "Every winter the lake froze and the town held a skating race. Frank won the race three years in a row. "
    "The fourth year Frank fell at the first corner, laughed, and skated the rest of the race with the children "
    "at the back, who decided he was the real winner.",
    "The hospital kitchen cooked soup for two hundred people each day. The cook, Rosa, made the soup in a pot so "
    "large that she stirred it with a paddle. Patients said the soup tasted like home. Rosa said the soup tasted "
    "like carrots, because carrots were what the farmers sent.",
    "Alice wanted to learn the names of the stars. Her grandfather gave her a book of stars and a small "
    "telescope. On clear nights Alice named the stars aloud, one by one, and her grandfather corrected her only "
    "when she was wrong, which was less often every week.",
    "The bus to the coast left at seven and came back at six. Between seven and six the driver, Walter, sat in "
    "a cafe by the harbour and watched the boats. Walter said it was the best job in the county, because the "
    "boats were never the same boats twice.",
    "Helen and Paul opened a shop that sold only umbrellas. In a dry summer the shop sold almost nothing, and "
    "Paul worried. Helen did not worry. In September the rain came, and the shop sold more umbrellas in one week "
    "than in the whole summer, and Paul stopped worrying.",
    "A farmer named Isaac kept sheep on the hill. Each evening Isaac counted the sheep as they came through the "
    "gate. One evening he counted one sheep too many. The extra sheep belonged to his neighbour, who came the next "
    "morning to count his own sheep and found one missing.",
    "The school play was about a king who lost his crown. Tom played the king, and Mary played the servant who "
    "found the crown. On the night of the play the real crown fell off the stage, and Mary found it, just as the "
    "servant did, and the audience thought it was part of the play.",
    "Grace collected buttons in glass jars. She sorted the buttons by colour: red buttons, blue buttons, white "
    "buttons and a jar of buttons that were every colour at once. When her friend Nora needed a button for a "
    "coat, Grace found a matching button in less than a minute.",
    "The lighthouse keeper, Arthur, climbed the stairs of the lighthouse twice a day. There were one hundred and "
    "twelve stairs. Arthur counted them every time, not because he had forgotten the number, but because counting "
    "the stairs made the climb feel shorter.",
    "Two friends, Kate and Leo, walked to the market every Friday. Kate bought vegetables and Leo bought bread. "
    "One Friday the baker was ill, so Leo bought vegetables too, and Kate teased him that he finally ate "
    "something green. Leo said the vegetables were for the soup, not for him.",
    "The town clock stopped at a quarter past three. Nobody fixed the clock for a year, and people began to say "
    "they would meet at the clock at a quarter past three as a joke. When the clock was finally repaired, the "
    "joke stayed, and people still met at the clock at that time.",
    "Victor painted houses for a living. He painted a house blue, then the next house yellow, then the next house "
    "blue again. After a year the whole street was blue and yellow, and visitors came to photograph it. Victor "
    "said he had only painted what the owners asked for.",
    "The orchestra practised in an old church because the church had good sound. The conductor, Simon, asked "
    "the violins to play more quietly, and the violins played more quietly. Then Simon asked the drums to play "
    "more quietly, and the drums, as usual, did not.",
    "Ellen found a lost cat on her doorstep. She put up signs about the cat on every street. A week later a "
    "boy named Ben knocked on her door and said the cat was his. The cat walked past Ben, sat on Ellen's chair, "
    "and Ben agreed the cat could visit Ellen whenever it liked.",
    "The factory made wooden chairs. Each chair took four hours to build and one hour to paint. The manager, "
    "Harold, wanted chairs built in three hours, so the workers built a chair in three hours, and that chair "
    "wobbled, and Harold agreed four hours was the right time after all.",
    "Sarah kept a diary for fifty years. The early pages were about school and friends, the middle pages were "
    "about work and children, and the last pages were about the garden. When her grandson read the diary, he "
    "noticed that the garden was in every part of it.",
)


def corpus_windows(
    model: LensModel,
    n: int = 24,
    seq_len: int = 64,
    *,
    paragraphs: tuple[str, ...] = PARAGRAPHS,
) -> Int[Tensor, "n seq_len"]:
    """Up to ``n`` windows of exactly ``seq_len`` tokens cut in order from the paragraphs joined by blank lines,
    each starting with the tokenizer's BOS token when it has one."""
    tok = tokenizer_of(model)
    stream = tok("\n\n".join(paragraphs), add_special_tokens=False)["input_ids"]
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    step = seq_len - len(bos)
    if step < 2 or len(stream) < step:
        raise EmptyInput(
            f"seq_len={seq_len}: expected between {len(bos) + 2} and {len(stream) + len(bos)} tokens for this corpus"
        )
    rows = [bos + stream[i : i + step] for i in range(0, len(stream) - step + 1, step)]
    return torch.tensor(rows[:n], dtype=torch.long)
