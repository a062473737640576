-- Whether a group dealt with a message, and applied it.
SELECT applied FROM inbox WHERE consumer_group = ?1 AND message_id = ?2
