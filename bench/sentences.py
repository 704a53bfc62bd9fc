"""Real English sentences of varied lengths (3 to about 120 words) for minilm's accuracy and
speed: written for this project, plain prose of the kinds a sentence-embedding model serves
(questions, product text, news-like reports, instructions, long technical paragraphs)."""

from __future__ import annotations

SENTENCES: tuple[str, ...] = (
    "Where is the station?",
    "The cat sleeps.",
    "Please close the door.",
    "How do I reset my password?",
    "A man is playing a guitar on the street.",
    "The meeting was moved to Thursday afternoon.",
    "Fresh bread is sold every morning at the corner bakery.",
    "Can you recommend a good book about the history of Rome?",
    "The train to Lyon was delayed by forty minutes because of a signal fault.",
    "She planted tomatoes, basil and two rows of beans in the small garden behind the house.",
    "Our support team answers emails within one business day, including public holidays.",
    "The river rose quickly after three days of heavy rain, and several roads near the bridge "
    "were closed.",
    "Preheat the oven to 200 degrees, brush the vegetables with olive oil and roast them for "
    "about twenty-five minutes.",
    "These waterproof hiking boots have a cushioned sole, a reinforced toe and laces that stay "
    "tied on long walks.",
    "Is it safe to take ibuprofen together with a cold medicine that already contains "
    "paracetamol?",
    "The committee approved the new budget after a long debate about school funding and the "
    "repair of public swimming pools.",
    "My laptop battery drains within two hours even when the screen brightness is low and no "
    "programs are open.",
    "Scientists observed a rare comet passing close to the sun last week, and amateur "
    "astronomers photographed its bright green tail.",
    "The library will be closed for renovation until the end of March; borrowed books can be "
    "returned at the town hall.",
    "He apologised for the mistake in the invoice and sent a corrected version with the "
    "discount that had been promised.",
    "Children learn languages more easily when they hear them every day at home, at school and "
    "while playing with friends.",
    "To change the default printer, open the settings, choose devices, select the printer you "
    "want and click the button marked set as default.",
    "The museum's new exhibition brings together paintings, letters and photographs that tell "
    "the story of the city's harbour over two hundred years.",
    "After the storm, volunteers cleared fallen branches from the park, repaired the fence "
    "around the playground and planted twenty young oak trees.",
    "The company reported higher profits this quarter, mainly because of strong sales of its "
    "electric bicycles in northern Europe and lower shipping costs.",
    "I ordered a blue jacket in size medium, but the parcel contained a black one in size "
    "large, so I would like to exchange it.",
    "Regular exercise, enough sleep and a varied diet with plenty of vegetables lower the risk "
    "of heart disease more than any single supplement does.",
    "The new bridge connects the two halves of the valley, cutting the drive between the "
    "villages from forty minutes to less than ten.",
    "Although the film was long and its plot was sometimes hard to follow, the acting was "
    "excellent and the music stayed with me for days.",
    "The software update fixes a bug that made the application crash when a file name "
    "contained an accent, and it makes large folders open faster.",
    "Farmers in the region are switching to crops that need less water, such as sorghum and "
    "chickpeas, after several dry summers in a row reduced their harvests.",
    "The hotel offers free parking, a heated indoor pool and breakfast served until eleven, and "
    "it is a ten-minute walk from the old town and the cathedral.",
    "When the fire alarm sounds, leave the building by the nearest staircase, do not use the "
    "lifts, and gather at the assembly point in the car park across the street.",
    "The orchestra opened the season with a symphony by Dvorak, followed by a new piano "
    "concerto written by a young composer from the city, which the audience greeted warmly.",
    "Researchers found that people who walked for thirty minutes a day slept better and "
    "reported less stress than those who did not, even when they did no other exercise during "
    "the week.",
    "The recipe asks for two cups of flour, one teaspoon of baking soda, a pinch of salt, three "
    "ripe bananas, half a cup of melted butter and a handful of chopped walnuts.",
    "Our neighbourhood association meets on the first Monday of each month to discuss traffic "
    "safety, the state of the pavements, and ideas for events that bring residents together.",
    "The airline cancelled all flights to the island because of the approaching hurricane and "
    "promised passengers a full refund or a free change of date within the next six months.",
    "Good documentation explains not only how to call a function but also why it exists, what "
    "it expects from its caller, what it returns, and what happens when something goes wrong "
    "along the way.",
    "The city council plans to turn the old railway yard into a park with walking paths, a "
    "community garden, a small lake for birds and a market hall where local farmers can sell "
    "their produce on weekends.",
    "During the interview, the candidate described how she had led a small team through a "
    "difficult product launch, kept the customers informed about every delay, and still "
    "delivered the first version on the promised date.",
    "Volcanic eruptions can cool the climate for a year or two, because the sulphur they send "
    "high into the atmosphere forms tiny droplets that reflect part of the sunlight back into "
    "space before it reaches the ground.",
    "If your package has not arrived within ten working days, please contact us with your order "
    "number and the delivery address, and we will trace the shipment with the courier or send "
    "a replacement at no extra cost to you.",
    "The old lighthouse on the northern cape was built in the eighteen-sixties from granite "
    "quarried on the island itself; its keepers lived in the cottage beside it until the light "
    "was automated about fifty years ago, and the cottage is now a small museum.",
    "Learning to play the violin as an adult takes patience: the first months are mostly about "
    "holding the bow correctly, finding the notes by ear, and accepting that the sound will be "
    "scratchy for a while before it becomes something you enjoy listening to.",
    "The report recommends that the hospital hire more night-shift nurses, replace its ageing "
    "scanners, and shorten waiting times in the emergency department by opening a separate area "
    "for minor injuries that can be treated without a full examination by a doctor.",
    "In the long run, the success of the project will depend less on the technology itself and "
    "more on whether the people who use it every day are trained well, trust the results it "
    "gives them, and are able to report problems quickly to someone who can fix them, which is "
    "why the plan sets aside a third of the budget for training and support during the first "
    "two years.",
    "The expedition set out from the coast in early spring with twelve people, six camels and "
    "enough water for three weeks; they crossed the dunes at night to avoid the heat, rested "
    "in the shade of rocks during the day, mapped two dry riverbeds that no survey had recorded "
    "before, and reached the oasis on the nineteenth day, tired but in good health, where they "
    "were welcomed by the families who have farmed dates there for generations and who shared "
    "their knowledge of wells and seasonal rains.",
    "When you write a benchmark that compares two servers, run them on the same machine with "
    "the same models, the same settings and the same amount of warm-up, alternate which one "
    "goes first so that neither always meets a quieter or busier moment, repeat each "
    "measurement several times, report the median together with the smallest and largest "
    "value, keep the raw numbers so that anyone can check the tables, and say plainly which "
    "parts of the comparison were not on equal terms, because readers judge the whole report "
    "by its weakest claim and a single unfair row can make every other figure look doubtful, "
    "however carefully it was measured and however honest the intentions behind it were.",
    "The village school had only two classrooms, one for the younger children and one for the "
    "older ones, and a single teacher who walked between them all day; in winter the pupils "
    "brought a piece of wood each morning for the stove, in summer lessons were often held "
    "under the chestnut tree in the yard, and when the school finally closed, decades later, "
    "many of its former pupils came back from the cities where they lived to share memories of "
    "the teacher, of the smell of ink and wood smoke, and of the long walk home through the "
    "fields when the days grew short and the first snow began to fall on the hills above the "
    "valley and the river.",
)
