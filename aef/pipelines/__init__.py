"""What runs the model (docs/model.md §7-§9): data (:mod:`.data`), training (:mod:`.train`,
:mod:`.schedule`), checkpoints, statistics, embedding scenes into GeoTIFFs (:mod:`.embed`,
:mod:`.geo`, :mod:`.georef`, :mod:`.cog`, :mod:`.quantize`), viewing them (:mod:`.show`) and the
``aef`` command line (:mod:`.cli`)."""
